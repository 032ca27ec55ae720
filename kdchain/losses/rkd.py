"""`rkd`: Park et al. 2019, "Relational Knowledge Distillation"."""

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdchain.spec.distill import LossTerm
from kdchain.spec.kinds import LOSSES


def embedding(fmap: torch.Tensor) -> torch.Tensor:
    """A node's output as an (N, D) embedding: feature maps are globally average-pooled, vectors flattened."""
    return fmap.mean(dim=(2, 3)) if fmap.dim() == 4 else fmap.flatten(1)


def _pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    # (N, D) -> (N, N) Euclidean distances, zero diagonal; clamped so that the sqrt has a gradient everywhere
    sq = e.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp_min(1e-12).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    d = _pairwise_distances(e)
    return d / d[d > 0].mean()  # the paper's mu: the mean distance over the pairs in the batch


def _angles(e: torch.Tensor) -> torch.Tensor:
    # (N, D) -> (N*N*N,): cos of the angle at j between i and k, <(e_i - e_j)/||.||, (e_k - e_j)/||.||>
    diff = F.normalize(e[None, :, :] - e[:, None, :], dim=2)  # (N, N, D)
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


def rkd_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, distance_weight: float = 25.0,
             angle_weight: float = 50.0) -> torch.Tensor:
    """Eqs. 4-7: distance_weight * Huber(psi_D) + angle_weight * Huber(psi_A) over the batch's pairs and triplets
    (Huber = smooth L1, delta 1)."""
    with torch.no_grad():
        t_d, t_a = _normalised_distances(teacher_emb), _angles(teacher_emb)
    s_d, s_a = _normalised_distances(student_emb), _angles(student_emb)
    return distance_weight * F.smooth_l1_loss(s_d, t_d) + angle_weight * F.smooth_l1_loss(s_a, t_a)


@LOSSES.register
class RkdLoss(LossTerm):
    """Park et al. 2019 (relational KD): smooth-L1 between the teacher's and the student's mean-normalised pairwise
    distances and triplet angles of penultimate embeddings (the node's map, globally average-pooled)."""

    teacher: ClassVar[bool] = True
    features: ClassVar[bool] = True
    kind: Literal["rkd"] = "rkd"
    distance_weight: float = Field(25.0, ge=0.0, description="weight of the distance term (paper: 25)")
    angle_weight: float = Field(50.0, ge=0.0, description="weight of the angle term (paper: 50)")
    teacher_node: str | None = Field(None, description="teacher node pooled into the embedding; default: last map")
    student_node: str | None = Field(None, description="student node pooled into the embedding; default: last map")

    def value(self, student_out, teacher_out, y, adapter=None):
        return rkd_loss(embedding(student_out[self.student_node]), embedding(teacher_out[self.teacher_node]),
                        self.distance_weight, self.angle_weight)
