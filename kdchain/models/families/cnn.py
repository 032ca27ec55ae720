"""The `cnn` family: VGG-style stages of conv-BN-ReLU blocks, a 2x2 pool after chosen stages, global average
pool and a linear (or one-hidden-layer) head. `kernel_size` and `pool_after` per stage express the VGG example's
student (conv 16-32-64-128-256, 1x1 conv to 512)."""

from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from kdchain.spec.kinds import FAMILIES
from kdchain.spec.models import Derive, Family


@FAMILIES.register
class CnnArch(Family):
    """VGG-style CNN: stages of conv-BN-ReLU blocks, a pool after each stage, global average pool, linear head."""

    kind: Literal["cnn"] = "cnn"
    channels: list[Annotated[int, Field(ge=1)]] = Field(
        description="output channels of each stage, e.g. [32, 64, 128]", min_length=1
    )
    convs_per_stage: list[Annotated[int, Field(ge=1)]] | Annotated[int, Field(ge=1)] = Field(
        1, description="conv-BN-ReLU blocks in each stage: one number for all stages or one per stage"
    )
    kernel_size: Literal[1, 3, 5, 7] | list[Literal[1, 3, 5, 7]] = Field(
        3, description="kernel size of every conv: one number for all stages or one per stage")
    pool: Literal["max", "avg", "none"] = Field("max", description="2x2 pooling after each stage except the last")
    pool_after: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="0-based stages followed by the 2x2 pool; default: every stage except the last")
    batch_norm: bool = Field(True, description="BatchNorm after each conv")
    hidden: int = Field(0, ge=0, description="width of a hidden layer in the classifier; 0 = linear head")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the classifier")

    @model_validator(mode="after")
    def _convs_match_stages(self):
        if isinstance(self.convs_per_stage, list) and len(self.convs_per_stage) != len(self.channels):
            raise ValueError(
                f"convs_per_stage has {len(self.convs_per_stage)} entries but channels has {len(self.channels)} stages"
            )
        if isinstance(self.kernel_size, list) and len(self.kernel_size) != len(self.channels):
            raise ValueError(f"kernel_size has {len(self.kernel_size)} entries but channels has {len(self.channels)} stages")
        if self.pool_after is not None and any(i >= len(self.channels) for i in self.pool_after):
            raise ValueError(f"pool_after names a stage beyond the last (stages are 0..{len(self.channels) - 1})")
        return self

    def kernels(self) -> list[int]:
        if isinstance(self.kernel_size, int):
            return [self.kernel_size] * len(self.channels)
        return list(self.kernel_size)

    def pools(self) -> list[bool]:
        """Whether stage i is followed by the 2x2 pool."""
        if self.pool == "none":
            return [False] * len(self.channels)
        after = set(range(len(self.channels) - 1)) if self.pool_after is None else set(self.pool_after)
        return [i in after for i in range(len(self.channels))]

    def convs(self) -> list[int]:
        if isinstance(self.convs_per_stage, int):
            return [self.convs_per_stage] * len(self.channels)
        return list(self.convs_per_stage)

    def build(self, num_classes: int, in_channels: int) -> nn.Module:
        return Cnn(self, num_classes, in_channels)

    def describe(self) -> str:
        stages = "-".join(f"{c}x{n}" if n > 1 else str(c) for c, n in zip(self.channels, self.convs()))
        return f"cnn {stages}" + (f", hidden {self.hidden}" if self.hidden else "")

    def default_tap(self) -> str:
        return "stages"

    def derive(self, derive: Derive) -> "CnnArch":
        channels = [max(1, round(c * derive.width)) for c in self.channels]
        convs = [max(1, round(n * derive.depth)) for n in self.convs()]
        hidden = max(1, round(self.hidden * derive.width)) if self.hidden else 0
        return self.model_copy(update={"channels": channels, "convs_per_stage": convs[0] if len(set(convs)) == 1
                                       else convs, "hidden": hidden})


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
