"""The model registry: a family per spec `kind` registers its builder, and optionally how to derive a student from
it, its default feature tap, its one-line description and what to load before training.

`build_model(arch, num_classes, in_channels)` makes the module; `derive_arch(teacher, derive)` scales a teacher's
architecture into a student of the same family; `describe(arch)` is the one-line summary shown in tables. This
module is a leaf: the families import `register` from it, and the package's `__init__` imports the families.
"""

from typing import Callable

from torch import nn

from kdchain.spec import Derive, DeriveStudent, PrunedArch, PruneStudent, SpecError

BUILDERS: dict[str, Callable[..., nn.Module]] = {}
DERIVERS: dict[str, Callable] = {}
TAPS: dict[str, Callable] = {}  # arch -> the deepest feature map before the head (the default feature-loss node)
DESCRIBERS: dict[str, Callable] = {}  # arch -> "cnn 16-32-64"
PREPARERS: dict[str, Callable] = {}  # (model, arch) -> None: pretrained weights loaded just before training


def register(kind: str, derive: Callable | None = None, tap: str | Callable | None = None,
             describe: Callable | None = None, prepare: Callable | None = None):
    """Decorates the builder `fn(arch, num_classes, in_channels) -> nn.Module` of the family `kind`."""
    def wrap(fn):
        BUILDERS[kind] = fn
        if derive is not None:
            DERIVERS[kind] = derive
        if tap is not None:
            TAPS[kind] = tap if callable(tap) else (lambda arch: tap)
        if describe is not None:
            DESCRIBERS[kind] = describe
        if prepare is not None:
            PREPARERS[kind] = prepare
        return fn
    return wrap


def build_model(arch, num_classes: int, in_channels: int) -> nn.Module:
    if arch.kind not in BUILDERS:
        raise SpecError([f"model kind {arch.kind!r} is unknown; choose one of: {', '.join(sorted(BUILDERS))}"])
    return BUILDERS[arch.kind](arch, num_classes=num_classes, in_channels=in_channels)


def resolve_student(student, teacher_arch, keep: list[str] = ()):
    """The architecture a generation trains: written out in full, derived from its teacher's, or pruned from its
    teacher (a plan until the teacher's weights are pruned; `keep`: the nodes feature losses tap)."""
    if isinstance(student, DeriveStudent):
        return derive_arch(teacher_arch, student.derive)
    if isinstance(student, PruneStudent):
        return PrunedArch(base=teacher_arch, prune=student.prune, keep=sorted(set(keep)))
    return student


def derive_arch(teacher_arch, derive: Derive):
    if teacher_arch.kind not in DERIVERS:
        raise SpecError([f"student.derive: cannot derive from a {teacher_arch.kind!r} teacher; "
                         f"derivable families: {', '.join(sorted(DERIVERS))}"])
    return DERIVERS[teacher_arch.kind](teacher_arch, derive)


def describe(arch) -> str:
    return DESCRIBERS[arch.kind](arch) if arch.kind in DESCRIBERS else arch.kind


def default_tap(arch) -> str:
    return TAPS[arch.kind](arch)


def prepare_for_training(model: nn.Module, arch) -> nn.Module:
    """Load pretrained weights where the spec names them (torchvision `weights`); other families start random."""
    if arch.kind in PREPARERS:
        PREPARERS[arch.kind](model, arch)
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
