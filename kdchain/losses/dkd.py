"""`dkd`: Zhao et al. 2022, "Decoupled Knowledge Distillation"."""

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdchain.spec.distill import LOGITS, LossTerm
from kdchain.spec.kinds import LOSSES


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, alpha: float,
             beta: float, temperature: float) -> torch.Tensor:
    """Eq. 7: alpha * TCKD + beta * NCKD, times T^2.

    TCKD = KL of the binary (target, all others) probabilities; NCKD = KL among the non-target classes, the
    target masked out (logit - 1000) before the softmax, as in the authors' code. Averaged over the batch."""
    T = temperature
    gt = F.one_hot(y, student_logits.shape[1]).bool()
    p_s, p_t = F.softmax(student_logits / T, dim=1), F.softmax(teacher_logits / T, dim=1)
    # (N, 2): [p_target, 1 - p_target]
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], dim=1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], dim=1)
    tckd = F.kl_div(b_s.clamp_min(1e-12).log(), b_t, reduction="batchmean") * T**2
    nckd = F.kl_div(F.log_softmax(student_logits / T - 1000.0 * gt, dim=1),
                    F.softmax(teacher_logits / T - 1000.0 * gt, dim=1), reduction="batchmean") * T**2
    return alpha * tckd + beta * nckd


@LOSSES.register
class DkdLoss(LossTerm):
    """Zhao et al. 2022 (decoupled KD): alpha * target-class KD + beta * non-target-class KD, both times T^2."""

    teacher: ClassVar[bool] = True
    logits: ClassVar[bool] = True
    labels: ClassVar[bool] = True  # the target class is the label's
    kind: Literal["dkd"] = "dkd"
    alpha: float = Field(1.0, ge=0.0, description="weight of TCKD (target vs. non-target probability)")
    beta: float = Field(8.0, ge=0.0, description="weight of NCKD (distribution among the non-target classes)")
    temperature: float = Field(4.0, gt=0.0, description="softmax temperature T")

    def value(self, student_out, teacher_out, y, adapter=None):
        return dkd_loss(student_out[LOGITS], teacher_out[LOGITS], y, self.alpha, self.beta, self.temperature)
