"""The typed spec of a chain: every setting, its default and what it means, one module per area.

`from kdchain.spec import ChainSpec, load_spec, ...` reaches every name; the modules hold them by area:
base (SpecError, hashing), models (architectures), distill (loss terms), train, search, data, tracking
(MLflow and promotion), chain (teacher, generations, the chain), load (YAML, `--set`, readable errors).
"""

from kdchain.spec.base import SpecError, Strict, canonical_json, flatten, spec_hash
from kdchain.spec.chain import ChainSpec, GenerationSpec, TeacherSpec
from kdchain.spec.deploy import DeploySpec
from kdchain.spec.data import (Augment, Cifar10Data, DataSpec, DigitsData, ImageFolderData, MarksData,
                               SplitFractions)
from kdchain.spec.distill import AtLoss, CeLoss, DkdLoss, FeatureLoss, FitnetLoss, KdLoss, Loss, RkdLoss
from kdchain.spec.load import apply_override, format_validation_error, load_spec, spec_from_dict
from kdchain.spec.measure import MeasureSpec
from kdchain.spec.models import (AnyArch, Arch, CnnArch, Derive, DeriveStudent, Prune, PrunedArch, PruneStudent,
                                 ResnetArch, StudentSpec, TimmArch, TorchvisionArch, is_checkpoint_path)
from kdchain.spec.search import (BestAccuracy, Knee, ParetoFront, SearchBudget, SearchObjective, SearchRunner,
                                 SearchSpace, SearchSpec, SmallestRetaining)
from kdchain.spec.sweep import SweepSpec
from kdchain.spec.tracking import PromotionSpec, TrackingSpec
from kdchain.spec.train import DistributedSpec, TrainSpec

__all__ = [
    "SpecError", "Strict", "canonical_json", "flatten", "spec_hash", "ChainSpec", "GenerationSpec", "TeacherSpec",
    "DeploySpec", "Augment", "Cifar10Data", "DataSpec", "DigitsData", "ImageFolderData", "MarksData", "SplitFractions",
    "AtLoss", "CeLoss", "DkdLoss", "FeatureLoss", "FitnetLoss", "KdLoss", "Loss", "RkdLoss",
    "apply_override", "format_validation_error", "load_spec", "spec_from_dict",
    "AnyArch", "Arch", "CnnArch", "Derive", "DeriveStudent", "Prune", "PrunedArch", "PruneStudent", "ResnetArch",
    "StudentSpec", "TimmArch", "TorchvisionArch", "is_checkpoint_path",
    "BestAccuracy", "Knee", "ParetoFront", "SearchBudget", "SearchObjective", "SearchRunner", "SearchSpace",
    "SearchSpec", "SmallestRetaining", "SweepSpec", "MeasureSpec", "PromotionSpec", "TrackingSpec", "TrainSpec",
    "DistributedSpec",
]
