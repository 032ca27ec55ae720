"""`dist`: Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher" (DIST, NeurIPS).

KL divergence asks the student to match the teacher's probabilities exactly, which a much smaller student cannot,
and a stronger teacher makes it worse. DIST asks for the same *relations* instead: per image, the student's class
probabilities should rise and fall with the teacher's (inter-class: a Pearson correlation across classes), and per
class, the images it is sure of should be the teacher's (intra-class: a correlation across the batch).
"""

from typing import ClassVar, Literal

import torch
from pydantic import Field

from kdchain.spec.distill import LOGITS, LossTerm
from kdchain.spec.kinds import LOSSES


def pearson_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1 - the Pearson correlation of each row of a with the same row of b (N, C) -> mean over rows."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    return 1 - r.mean()


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float, gamma: float,
              temperature: float) -> torch.Tensor:
    """beta * inter-class + gamma * intra-class relation distance of softmax(z / T), times T^2 (eq. 6 and the
    authors' code)."""
    y_s = (student_logits / temperature).softmax(1)  # (N, C)
    y_t = (teacher_logits / temperature).softmax(1)
    inter = pearson_distance(y_s, y_t)  # each image's distribution over the classes
    intra = pearson_distance(y_s.t(), y_t.t())  # each class's scores over the batch
    return temperature ** 2 * (beta * inter + gamma * intra)


@LOSSES.register
class DistLoss(LossTerm):
    """Huang et al. 2022 (DIST): relation matching of class probabilities, inter- and intra-class Pearson
    correlation instead of KL; it suits a student much smaller than its teacher."""

    teacher: ClassVar[bool] = True
    logits: ClassVar[bool] = True
    kind: Literal["dist"] = "dist"
    beta: float = Field(1.0, ge=0.0, description="weight of the inter-class relation (per image, across classes)")
    gamma: float = Field(1.0, ge=0.0, description="weight of the intra-class relation (per class, across the batch)")
    temperature: float = Field(1.0, gt=0.0, description="softmax temperature T (the paper: 1 on ImageNet, 4 on CIFAR)")

    def value(self, student_out, teacher_out, y, adapter=None):
        return dist_loss(student_out[LOGITS], teacher_out[LOGITS], self.beta, self.gamma, self.temperature)
