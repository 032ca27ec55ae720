"""The typed spec of a chain: every setting, its default and what it means, one module per area.

`from kdchain.spec import ChainSpec, load_spec, ...` reaches the chain's settings; the modules hold them by area:
base (SpecError, hashing), kinds (the registries), models (what a model family is, derive, prune), distill (what
a loss term is), data (what a data source is, split, augmentation), objective (what a search objective is),
unions (every registered kind, once imported), train, search, deploy, measure, tracking (MLflow and promotion),
chain (teacher, generations, the chain), load (YAML, `--set`, readable errors). The kinds themselves live with
their implementation: kdchain/losses/, kdchain/models/families/, kdchain/data/sources/, kdchain/objectives/.

Kind modules import the submodules they need (base, kinds, models, distill, data, objective), never this package or
`unions`: importing `unions` imports every kind module first.
"""

from kdchain.spec.base import SpecError, Strict, canonical_json, flatten, spec_hash
from kdchain.spec.chain import ChainSpec, GenerationSpec, TeacherSpec
from kdchain.spec.data import Augment, Source, SplitFractions
from kdchain.spec.deploy import DeploySpec
from kdchain.spec.distill import LOGITS, LossTerm
from kdchain.spec.kinds import FAMILIES, LOSSES, OBJECTIVES, SOURCES
from kdchain.spec.load import apply_override, format_validation_error, load_spec, spec_from_dict
from kdchain.spec.measure import MeasureSpec
from kdchain.spec.models import (Derive, DeriveStudent, Family, Prune, PrunedArch, PruneStudent, PruneTarget,
                                 is_checkpoint_path)
from kdchain.spec.objective import Objective
from kdchain.spec.search import SearchBudget, SearchRunner, SearchSpace, SearchSpec
from kdchain.spec.sweep import SweepSpec
from kdchain.spec.tracking import PromotionSpec, TrackingSpec
from kdchain.spec.train import DistributedSpec, TrainSpec
from kdchain.spec.unions import AnyArch, Arch, DataSpec, Loss, SearchObjective, StudentSpec

__all__ = [
    "SpecError", "Strict", "canonical_json", "flatten", "spec_hash", "FAMILIES", "LOSSES", "OBJECTIVES", "SOURCES",
    "Derive", "DeriveStudent", "Family", "Prune", "PrunedArch", "PruneStudent", "PruneTarget", "is_checkpoint_path", "LOGITS",
    "LossTerm", "Augment", "Source", "SplitFractions", "Objective", "AnyArch", "Arch", "DataSpec", "Loss",
    "SearchObjective", "StudentSpec", "DeploySpec", "MeasureSpec", "SearchBudget", "SearchRunner", "SearchSpace",
    "SearchSpec", "SweepSpec", "PromotionSpec", "TrackingSpec", "DistributedSpec", "TrainSpec", "ChainSpec",
    "GenerationSpec", "TeacherSpec", "apply_override", "format_validation_error", "load_spec", "spec_from_dict",
]
