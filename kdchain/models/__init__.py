"""Models: one module per family in kdchain/models/families/ (cnn, resnet, torchvision, timm), building and
describing any architecture (registry), pruning a trained model (prune: how; pruned: the architecture it leaves),
feature taps by node name (taps) and the checkpoint format (saved).

To add a family: a module in kdchain/models/families/ whose spec class (a kdchain.spec.models.Family) is decorated
with kdchain.spec.kinds.FAMILIES.register and implements `build` and `default_tap`; nothing else changes.
"""

from kdchain.models.build import (build_model, count_params, default_tap, derive_arch, describe, prepare_for_training,
                                  resolve_student)

# models logged to MLflow before the package split pickled these two as kdchain.models.Cnn / .ConvBlock
from kdchain.models.families.cnn import Cnn, ConvBlock
from kdchain.models import pruned  # noqa: F401  (teaches build_model what a pruned architecture is)

__all__ = ["build_model", "count_params", "default_tap", "derive_arch", "describe", "prepare_for_training",
           "resolve_student", "Cnn", "ConvBlock"]
