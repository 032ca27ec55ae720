"""`ce`: cross-entropy on the labels."""

from typing import ClassVar, Literal

import torch.nn.functional as F
from pydantic import Field

from kdchain.spec.distill import LOGITS, LossTerm
from kdchain.spec.kinds import LOSSES


@LOSSES.register
class CeLoss(LossTerm):
    """Cross-entropy on the labels."""

    labels: ClassVar[bool] = True

    kind: Literal["ce"] = "ce"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="label smoothing of the cross-entropy")

    def value(self, student_out, teacher_out, y, adapter=None):
        return F.cross_entropy(student_out[LOGITS], y, label_smoothing=self.label_smoothing)
