"""`kd`: Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"."""

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdchain.spec.distill import LOGITS, LossTerm
from kdchain.spec.kinds import LOSSES


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * temperature**2


@LOSSES.register
class KdLoss(LossTerm):
    """Hinton et al. 2015: KL(softmax(t/T) || softmax(s/T)) * T^2."""

    teacher: ClassVar[bool] = True
    logits: ClassVar[bool] = True
    kind: Literal["kd"] = "kd"
    temperature: float = Field(4.0, gt=0.0, description="softmax temperature T")

    def value(self, student_out, teacher_out, y, adapter=None):
        return kd_loss(student_out[LOGITS], teacher_out[LOGITS], self.temperature)
