"""Loss terms keyed by the spec's `kind`, and the weighted sum a generation trains on.

Each term sees the student's outputs, the teacher's outputs (or None) and the labels; outputs are dicts
{"logits": (N, K), node: (N, C, H, W)} from `kdchain.taps.Tapped`.
"""

import torch
import torch.nn.functional as F
from torch import nn

from kdchain.specs import CeLoss, FeatureLoss, KdLoss

LOGITS = "logits"


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. 2015, "Distilling the Knowledge in a Neural Network":
    KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * temperature**2


class FeatureAdapter(nn.Module):
    """Maps a student feature map (N, Cs, Hs, Ws) to the teacher's (N, Ct, Ht, Wt): 1x1 conv, then resize."""

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]):
        super().__init__()
        cs, ct = student_shape[0], teacher_shape[0]
        self.proj = nn.Conv2d(cs, ct, 1, bias=False) if cs != ct else nn.Identity()
        self.size = tuple(teacher_shape[1:]) if tuple(student_shape[1:]) != tuple(teacher_shape[1:]) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        if self.size is not None:
            x = F.adaptive_avg_pool2d(x, self.size)
        return x


def feature_loss(student_map: torch.Tensor, teacher_map: torch.Tensor, adapter: nn.Module) -> torch.Tensor:
    """FitNets-style hint (Romero et al. 2015): MSE between the adapted student map and the teacher map."""
    return F.mse_loss(adapter(student_map), teacher_map)


def _ce(term: CeLoss, student_out, teacher_out, y, adapter):
    return F.cross_entropy(student_out[LOGITS], y, label_smoothing=term.label_smoothing)


def _kd(term: KdLoss, student_out, teacher_out, y, adapter):
    return kd_loss(student_out[LOGITS], teacher_out[LOGITS], term.temperature)


def _feature(term: FeatureLoss, student_out, teacher_out, y, adapter):
    return feature_loss(student_out[term.student_node], teacher_out[term.teacher_node], adapter)


# the spec's loss `kind` -> fn(term spec, student outputs, teacher outputs, labels, adapter or None)
TERMS = {"ce": _ce, "kd": _kd, "feature": _feature}
TEACHER_TERMS = {"kd", "feature"}  # kinds that need the teacher's outputs


class DistillLoss(nn.Module):
    """sum_i weight_i * term_i; `forward` returns (total, {term name: value}) without host synchronisation.

    `terms` are loss specs with their nodes resolved; `shapes[i]` = (student map shape, teacher map shape) of
    feature term i, for its adapter.
    """

    def __init__(self, terms: list, shapes: dict[int, tuple[tuple, tuple]] | None = None):
        super().__init__()
        self.terms = terms
        # adapters are trained with the student; keyed by term index
        self.adapters = nn.ModuleDict({str(i): FeatureAdapter(*shp) for i, shp in (shapes or {}).items()})
        kinds = [t.kind for t in terms]
        self.names = [k if kinds.count(k) == 1 else f"{k}_{i}" for i, k in enumerate(kinds)]

    @property
    def needs_teacher(self) -> bool:
        return any(t.kind in TEACHER_TERMS for t in self.terms)

    def nodes(self, side: str) -> list[str]:
        """The feature nodes this loss reads from the `student` or the `teacher`."""
        return sorted({getattr(t, f"{side}_node") for t in self.terms if isinstance(t, FeatureLoss)})

    def forward(self, student_out: dict, teacher_out: dict | None, y: torch.Tensor):
        parts = {}
        for i, (term, name) in enumerate(zip(self.terms, self.names)):
            adapter = self.adapters[str(i)] if str(i) in self.adapters else None
            parts[name] = TERMS[term.kind](term, student_out, teacher_out, y, adapter)
        total = sum(term.weight * parts[name] for term, name in zip(self.terms, self.names))
        return total, parts
