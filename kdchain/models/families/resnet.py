"""CIFAR-style ResNet (He et al. 2016, "Deep Residual Learning", section 4.2), as in the teacher-assistant papers.

A 3x3 stem to 16 channels, then 3 stages of n basic blocks at 16, 32, 64 channels (times `width`), stride 2 at
the start of stages 2 and 3; depth = 6n + 2 (ResNet-8/14/20/56 have n = 1/2/3/9). Shortcuts that change shape
are option A of the paper: subsample and zero-pad the channels, no parameters, so ResNet-56 has 0.85M and
ResNet-20 0.27M parameters as published.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from kdchain.models.families.cnn import CnnArch
from kdchain.spec.kinds import FAMILIES
from kdchain.spec.models import Derive, Family


@FAMILIES.register
class ResnetArch(Family):
    """CIFAR-style ResNet (He et al. 2016, sec. 4.2): 3 stages of n basic blocks, depth = 6n + 2."""

    kind: Literal["resnet"] = "resnet"
    depth: int = Field(20, ge=8, description="layers, 6n + 2: 8, 14, 20, 32, 44, 56, 110")
    width: float = Field(1.0, gt=0.0, le=16.0, description="multiplier on the stage widths 16, 32, 64")

    @field_validator("depth")
    @classmethod
    def _six_n_plus_2(cls, depth: int):
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 (8, 14, 20, 32, 44, 56, 110), got {depth}")
        return depth

    def blocks(self) -> int:
        return (self.depth - 2) // 6

    def widths(self) -> list[int]:
        return [max(1, round(c * self.width)) for c in (16, 32, 64)]

    def build(self, num_classes: int, in_channels: int) -> nn.Module:
        return CifarResNet(self, num_classes, in_channels)

    def describe(self) -> str:
        return f"resnet-{self.depth}" + (f" x{self.width:g}" if self.width != 1 else "")

    def default_tap(self) -> str:
        return "layer3"

    def derive(self, derive: Derive):
        if derive.to == "cnn":
            # the same layout as a plain cnn: stem + 2n convs per stage, pooled where the ResNet strides
            convs = [max(1, round(2 * self.blocks() * derive.depth)) for _ in range(3)]
            return CnnArch(channels=[max(1, round(w * derive.width)) for w in self.widths()], convs_per_stage=convs)
        blocks = max(1, round(self.blocks() * derive.depth))
        return self.model_copy(update={"depth": 6 * blocks + 2, "width": self.width * derive.width})



class PadShortcut(nn.Module):
    """x (N, C, H, W) -> (N, C + 2p, H/2, W/2): every other pixel, zero channels on both sides."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride == 1 and cin == cout:
            self.shortcut = nn.Identity()
        elif (cout - cin) % 2 == 0 and cout >= cin and stride == 2:
            self.shortcut = PadShortcut((cout - cin) // 2)
        else:  # odd channel growth after a width multiplier: a projection (option B)
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, arch: ResnetArch, num_classes: int, in_channels: int):
        super().__init__()
        widths, n = arch.widths(), arch.blocks()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin, layers = widths[0], []
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(cin, w, 2 if i > 0 and j == 0 else 1))
                cin = w
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 64w, H/4, W/4): the default feature tap
        return self.fc(torch.flatten(self.pool(x), 1))
