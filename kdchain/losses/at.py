"""`at`: Zagoruyko & Komodakis 2017, "Paying More Attention to Attention"."""

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdchain.spec.distill import LossTerm
from kdchain.spec.kinds import LOSSES


def attention_map(fmap: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W): mean_c |A_c|^p, L2-normalised per image (eq. 2); a transformer's tokens
    (N, T, D) -> (N, T), the mean over each token's channels."""
    return F.normalize(fmap.abs().pow(p).mean(-1 if fmap.dim() == 3 else 1).flatten(1), dim=1)


def at_loss(student_map: torch.Tensor, teacher_map: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Eq. 2 as in the authors' code: mean over images and positions of (Q_s/||Q_s|| - Q_t/||Q_t||)^2. A student
    map of another spatial size (or token count) is average-pooled to the teacher's first; channels may differ
    (attention sums them away)."""
    if student_map.dim() == 3 and student_map.shape[1] != teacher_map.shape[1]:
        student_map = F.adaptive_avg_pool1d(student_map.transpose(1, 2), teacher_map.shape[1]).transpose(1, 2)
    elif student_map.dim() == 4 and student_map.shape[-2:] != teacher_map.shape[-2:]:
        student_map = F.adaptive_avg_pool2d(student_map, teacher_map.shape[-2:])
    return (attention_map(student_map, p) - attention_map(teacher_map, p)).pow(2).mean()


@LOSSES.register
class AtLoss(LossTerm):
    """Zagoruyko & Komodakis 2017 (attention transfer): squared distance of L2-normalised spatial attention maps
    mean_c |A_c|^p of a teacher node and a student node."""

    teacher: ClassVar[bool] = True
    features: ClassVar[bool] = True
    kind: Literal["at"] = "at"
    weight: float = Field(500.0, ge=0.0, description="weight of this term (the paper's beta/2 = 1000/2)")
    p: float = Field(2.0, gt=0.0, description="exponent of the attention map mean_c |A_c|^p")
    teacher_node: str | None = Field(None, description="tapped node of the teacher; default: its last feature map")
    student_node: str | None = Field(None, description="tapped node of the student; default: its last feature map")

    def value(self, student_out, teacher_out, y, adapter=None):
        return at_loss(student_out[self.student_node], teacher_out[self.teacher_node], self.p)
