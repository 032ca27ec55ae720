"""`fitnet`: Romero et al. 2015, "FitNets: Hints for Thin Deep Nets": a conv regressor from the student's guided
layer to the teacher's hint layer, trained on the hint alone for the first `hint_epochs` (stage 1)."""

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdchain.spec.distill import LossTerm
from kdchain.spec.kinds import LOSSES


class HintRegressor(nn.Module):
    """FitNets' regressor r: a 3x3 conv from the student's guided layer (N, Cs, Hs, Ws) to the teacher's hint
    channels Ct, then a resize to (Ht, Wt) when the maps differ in size."""

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]):
        super().__init__()
        if len(student_shape) == 2:  # a transformer's tokens (T, D): a linear map of each token, as FeatureAdapter
            from kdchain.losses.feature import FeatureAdapter

            self.conv = FeatureAdapter(student_shape, teacher_shape)
            self.size = None
            return
        self.conv = nn.Conv2d(student_shape[0], teacher_shape[0], 3, padding=1, bias=False)
        self.size = tuple(teacher_shape[1:]) if tuple(student_shape[1:]) != tuple(teacher_shape[1:]) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.adaptive_avg_pool2d(x, self.size) if self.size is not None else x


def fitnet_loss(student_map: torch.Tensor, teacher_map: torch.Tensor, regressor: nn.Module) -> torch.Tensor:
    """Eq. 3: 1/2 ||u_h(x) - r(v_g(x))||^2, here averaged over the elements (not summed) so that its weight does not
    depend on the size of the map."""
    return 0.5 * F.mse_loss(regressor(student_map), teacher_map)


@LOSSES.register
class FitnetLoss(LossTerm):
    """Romero et al. 2015 (FitNets): 0.5 * MSE between the teacher's hint layer and a conv regressor of the student's
    guided layer; the first `hint_epochs` epochs train on the hint alone (stage 1), then on the full loss."""

    teacher: ClassVar[bool] = True
    features: ClassVar[bool] = True
    adapted: ClassVar[bool] = True
    hint: ClassVar[bool] = True
    kind: Literal["fitnet"] = "fitnet"
    teacher_node: str | None = Field(None, description="hint layer of the teacher; default: its last feature map")
    student_node: str | None = Field(None, description="guided layer of the student; default: its last feature map")
    hint_epochs: int = Field(0, ge=0, description="first epochs trained on the fitnet hint terms alone; 0 = none")

    def adapter(self, student_shape, teacher_shape) -> nn.Module:
        return HintRegressor(student_shape, teacher_shape)

    def value(self, student_out, teacher_out, y, adapter=None):
        return fitnet_loss(student_out[self.student_node], teacher_out[self.teacher_node], adapter)
