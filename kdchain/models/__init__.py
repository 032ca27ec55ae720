"""Model families: the registry (`build_model`, `derive_arch`, `describe`, `default_tap`), one module per family
(cnn, resnet, torchvision, timm), a student pruned from its teacher (prune: how; pruned: the family) and
feature taps by node name (taps).

To add a family: a module whose builder is decorated with `kdchain.models.registry.register(kind, ...)`, a spec
class in `kdchain/spec/models.py` added to `Arch`, and an import line below.
"""

from kdchain.models.registry import (build_model, count_params, default_tap, derive_arch, describe,
                                     prepare_for_training, resolve_student)

# the families register themselves on import
from kdchain.models import cnn, pruned, resnet, timm, torchvision  # noqa: E402,F401
# models logged to MLflow before the package split pickled these two as kdchain.models.Cnn / .ConvBlock
from kdchain.models.cnn import Cnn, ConvBlock  # noqa: E402,F401

__all__ = ["build_model", "count_params", "default_tap", "derive_arch", "describe", "prepare_for_training",
           "resolve_student", "Cnn", "ConvBlock"]
