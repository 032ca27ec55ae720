"""Architecture families: a registry from the spec's `kind` to a builder, and student derivation.

`build_model(arch, num_classes, in_channels)` makes the module; `derive_arch(teacher, derive)` scales a teacher's
architecture into a student of the same family; `describe(arch)` is the one-line summary shown in tables.
"""

from typing import Callable

import torch
from torch import nn

from kdchain.specs import CnnArch, Derive, DeriveStudent, SpecError

BUILDERS: dict[str, Callable[..., nn.Module]] = {}
DERIVERS: dict[str, Callable] = {}


def register(kind: str, derive: Callable | None = None):
    def wrap(fn):
        BUILDERS[kind] = fn
        if derive is not None:
            DERIVERS[kind] = derive
        return fn
    return wrap


def build_model(arch, num_classes: int, in_channels: int) -> nn.Module:
    if arch.kind not in BUILDERS:
        raise SpecError([f"model kind {arch.kind!r} is unknown; choose one of: {', '.join(sorted(BUILDERS))}"])
    return BUILDERS[arch.kind](arch, num_classes=num_classes, in_channels=in_channels)


def resolve_student(student, teacher_arch):
    """The architecture a generation trains: written out in full, or derived from its teacher's."""
    if isinstance(student, DeriveStudent):
        return derive_arch(teacher_arch, student.derive)
    return student


def derive_arch(teacher_arch, derive: Derive):
    if teacher_arch.kind not in DERIVERS:
        raise SpecError([f"student.derive: cannot derive from a {teacher_arch.kind!r} teacher; "
                         f"derivable families: {', '.join(sorted(DERIVERS))}"])
    return DERIVERS[teacher_arch.kind](teacher_arch, derive)


def describe(arch) -> str:
    if isinstance(arch, CnnArch):
        convs = arch.convs()
        stages = "-".join(f"{c}x{n}" if n > 1 else str(c) for c, n in zip(arch.channels, convs))
        head = f", hidden {arch.hidden}" if arch.hidden else ""
        return f"cnn {stages}{head}"
    if arch.kind == "resnet":
        return f"resnet-{arch.depth}" + (f" x{arch.width:g}" if arch.width != 1 else "")
    if arch.kind == "torchvision":
        return arch.name + (" (pretrained)" if arch.weights else "") + (
            f", frozen {','.join(arch.freeze)}" if arch.freeze else "")
    return arch.kind


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------- cnn


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, bn: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=not bn)
        if bn:
            self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)


class Cnn(nn.Module):
    """stages[i] = n_i conv blocks (+ 2x2 pool except after the last stage) -> global avg pool -> head."""

    def __init__(self, arch: CnnArch, num_classes: int, in_channels: int):
        super().__init__()
        stages, cin = [], in_channels
        for cout, n, k, pooled in zip(arch.channels, arch.convs(), arch.kernels(), arch.pools()):
            blocks = [ConvBlock(cin if j == 0 else cout, cout, k, arch.batch_norm) for j in range(n)]
            if pooled:
                blocks.append(nn.MaxPool2d(2) if arch.pool == "max" else nn.AvgPool2d(2))
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(arch.dropout) if arch.dropout else nn.Identity()
        if arch.hidden:
            self.classifier = nn.Sequential(nn.Linear(cin, arch.hidden), nn.ReLU(inplace=True),
                                            nn.Linear(arch.hidden, num_classes))
        else:
            self.classifier = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(x)  # (N, C_last, H', W'): the default feature tap
        return self.classifier(self.dropout(self.flatten(self.pool(x))))


def derive_cnn(arch: CnnArch, derive: Derive) -> CnnArch:
    channels = [max(1, round(c * derive.width)) for c in arch.channels]
    convs = [max(1, round(n * derive.depth)) for n in arch.convs()]
    hidden = max(1, round(arch.hidden * derive.width)) if arch.hidden else 0
    convs_field = convs[0] if len(set(convs)) == 1 else convs
    return arch.model_copy(update={"channels": channels, "convs_per_stage": convs_field, "hidden": hidden})


@register("cnn", derive=derive_cnn)
def cnn(arch: CnnArch, num_classes: int, in_channels: int) -> nn.Module:
    return Cnn(arch, num_classes, in_channels)


DEFAULT_TAPS: dict[str, str] = {"cnn": "stages"}  # the deepest feature map before the head, per family


def default_tap(arch) -> str:
    if arch.kind == "torchvision":
        from kdchain.zoo import default_tap as zoo_tap

        return zoo_tap(arch)
    return DEFAULT_TAPS[arch.kind]


def prepare_for_training(model: nn.Module, arch) -> nn.Module:
    """Load pretrained weights where the spec names them (torchvision `weights`); other families start random."""
    if arch.kind == "torchvision":
        from kdchain.zoo import load_weights

        load_weights(model, arch)
    return model


# the other families live in their own modules and register themselves here
import kdchain.resnet  # noqa: E402,F401
import kdchain.zoo  # noqa: E402,F401
