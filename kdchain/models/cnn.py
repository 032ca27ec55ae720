"""The `cnn` family: VGG-style stages of conv-BN-ReLU blocks, a 2x2 pool after chosen stages, global average
pool and a linear (or one-hidden-layer) head. `kernel_size` and `pool_after` per stage express the VGG example's
student (conv 16-32-64-128-256, 1x1 conv to 512)."""

import torch
from torch import nn

from kdchain.models.registry import register
from kdchain.spec import CnnArch, Derive


def describe_cnn(arch: CnnArch) -> str:
    convs = arch.convs()
    stages = "-".join(f"{c}x{n}" if n > 1 else str(c) for c, n in zip(arch.channels, convs))
    head = f", hidden {arch.hidden}" if arch.hidden else ""
    return f"cnn {stages}{head}"


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


@register("cnn", derive=derive_cnn, tap="stages", describe=describe_cnn)
def cnn(arch: CnnArch, num_classes: int, in_channels: int) -> nn.Module:
    return Cnn(arch, num_classes, in_channels)
