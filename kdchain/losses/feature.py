"""`feature`: a FitNets-style hint (Romero et al. 2015) on any pair of tapped nodes, through a trained 1x1 adapter."""

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdchain.spec.distill import LossTerm
from kdchain.spec.kinds import LOSSES


class FeatureAdapter(nn.Module):
    """Maps a student feature map (N, Cs, Hs, Ws) to the teacher's (N, Ct, Ht, Wt): 1x1 conv, then resize. A
    transformer's tokens (N, Ts, Ds) -> (N, Tt, Dt): a linear map of each token, then the tokens resized."""

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]):
        super().__init__()
        self.tokens = len(student_shape) == 2  # (tokens, dim) per image
        (cs, ct) = (student_shape[-1], teacher_shape[-1]) if self.tokens else (student_shape[0], teacher_shape[0])
        layer = nn.Linear(cs, ct, bias=False) if self.tokens else nn.Conv2d(cs, ct, 1, bias=False)
        self.proj = layer if cs != ct else nn.Identity()
        size = (teacher_shape[0],) if self.tokens else tuple(teacher_shape[1:])
        self.size = size if size != ((student_shape[0],) if self.tokens else tuple(student_shape[1:])) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        if self.size is not None and self.tokens:
            x = F.adaptive_avg_pool1d(x.transpose(1, 2), self.size[0]).transpose(1, 2)
        elif self.size is not None:
            x = F.adaptive_avg_pool2d(x, self.size)
        return x


@LOSSES.register
class FeatureLoss(LossTerm):
    """MSE between a teacher feature map and a student feature map (1x1-conv adapter and resize when they differ)."""

    teacher: ClassVar[bool] = True
    features: ClassVar[bool] = True
    adapted: ClassVar[bool] = True
    kind: Literal["feature"] = "feature"
    teacher_node: str | None = Field(None, description="tapped node of the teacher; default: its last feature map")
    student_node: str | None = Field(None, description="tapped node of the student; default: its last feature map")

    def adapter(self, student_shape, teacher_shape) -> nn.Module:
        return FeatureAdapter(student_shape, teacher_shape)

    def value(self, student_out, teacher_out, y, adapter=None):
        return F.mse_loss(adapter(student_out[self.student_node]), teacher_out[self.teacher_node])
