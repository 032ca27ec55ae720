"""Building and describing any architecture a config names: a model family's spec does it itself
(kdchain.spec.models.Family's methods, one module a family in kdchain/models/families/); a pruned one is its base
family with the pruning record applied (kdchain.models.pruned).

`build_model(arch, num_classes, in_channels)` makes the module; `derive_arch(teacher, derive)` scales a teacher's
architecture into a student; `describe(arch)` is the one-line summary shown in tables.
"""

from typing import Callable

from torch import nn

from kdchain.spec.models import Derive, DeriveStudent, PrunedArch, PruneStudent

# build, derive and describe of a pruned architecture; kdchain.models.pruned fills it (this module stays a leaf)
PRUNED: dict[str, Callable] = {}


def build_model(arch, num_classes: int, in_channels: int) -> nn.Module:
    if arch.kind == "pruned":
        return PRUNED["build"](arch, num_classes, in_channels)
    return arch.build(num_classes, in_channels)


def resolve_student(student, teacher_arch, keep: list[str] = ()):
    """The architecture a generation trains: written out in full, derived from its teacher's, or pruned from its
    teacher (a plan until the teacher's weights are pruned; `keep`: the nodes feature losses tap)."""
    if isinstance(student, DeriveStudent):
        return derive_arch(teacher_arch, student.derive)
    if isinstance(student, PruneStudent):
        return PrunedArch(base=teacher_arch, prune=student.prune, keep=sorted(set(keep)))
    return student


def derive_arch(teacher_arch, derive: Derive):
    if teacher_arch.kind == "pruned":
        return PRUNED["derive"](teacher_arch, derive)
    return teacher_arch.derive(derive)


def describe(arch) -> str:
    if arch.kind == "pruned":
        return PRUNED["describe"](arch)
    return arch.describe()


def default_tap(arch) -> str:
    return default_tap(arch.base) if arch.kind == "pruned" else arch.default_tap()


def prepare_for_training(model: nn.Module, arch) -> nn.Module:
    """Load pretrained weights where the spec names them (torchvision, timm `weights`); the rest start random."""
    if arch.kind != "pruned":
        arch.prepare(model)
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
