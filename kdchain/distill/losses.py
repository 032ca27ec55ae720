"""The weighted sum a generation trains on: its loss terms (kdchain/losses/, one module a kind), each told what it
reads and computing itself; adapters trained with the student; several teachers for the logit terms.

Each term sees the student's outputs, the teacher's outputs (or None) and the labels; outputs are dicts
{"logits": (N, K), node: (N, C, H, W)} from `kdchain.models.taps.Tapped`.
"""

import torch
from torch import nn

from kdchain.spec.distill import LOGITS


def teacher_key(i: int) -> str:
    """Output key of the logits of extra teacher i (teachers: ancestors); the direct teacher's are "logits"."""
    return f"{LOGITS}@{i}"


class DistillLoss(nn.Module):
    """sum_i weight_i * term_i; `forward` returns (total, {term name: value}) without host synchronisation.

    `terms` are loss specs with their nodes resolved; `shapes[i]` = (student map shape, teacher map shape) of
    each term with an adapter (feature, fitnet), for it. `teacher_weights` = {teacher output key: weight} when several teachers
    teach the logit terms (the direct teacher's key is "logits", extra teacher i's `teacher_key(i)`).
    `hint_epochs` > 0: `set_epoch(e)` with e <= hint_epochs counts the hint terms alone (FitNets stage 1).
    """

    def __init__(self, terms: list, shapes: dict[int, tuple[tuple, tuple]] | None = None,
                 teacher_weights: dict[str, float] | None = None):
        super().__init__()
        self.terms = terms
        # adapters are trained with the student; keyed by term index
        self.adapters = nn.ModuleDict({str(i): terms[i].adapter(*shp) for i, shp in (shapes or {}).items()})
        kinds = [t.kind for t in terms]
        self.names = [k if kinds.count(k) == 1 else f"{k}_{i}" for i, k in enumerate(kinds)]
        self.teacher_weights = teacher_weights or {LOGITS: 1.0}
        self.hint_epochs = max([t.hint_epochs for t in terms if type(t).hint], default=0)
        self.hint_only = False

    def set_epoch(self, epoch: int) -> None:
        """1-based epoch about to be trained: the hint stage of FitNets lasts `hint_epochs` epochs."""
        self.hint_only = epoch <= self.hint_epochs

    @property
    def needs_teacher(self) -> bool:
        return any(type(t).teacher for t in self.terms)

    def nodes(self, side: str) -> list[str]:
        """The feature nodes this loss reads from the `student` or the `teacher`."""
        return sorted({getattr(t, f"{side}_node") for t in self.terms if getattr(t, f"{side}_node", None)})

    partial_labels = False  # set by fit: some training images have no label (-1); label terms skip them

    def _term(self, i: int, term, student_out: dict, teacher_out: dict | None, y, labeled=None):
        adapter = self.adapters[str(i)] if str(i) in self.adapters else None
        if labeled is not None and type(term).labels:  # ce, dkd: on the batch's labeled images alone
            if not bool(labeled.any()):  # a host sync, only when the data holds unlabeled images
                return student_out[LOGITS].sum() * 0.0
            student_out, y = _rows(student_out, labeled), y[labeled]
            teacher_out = None if teacher_out is None else _rows(teacher_out, labeled)
        if not type(term).logits or len(self.teacher_weights) == 1:
            return term.value(student_out, teacher_out, y, adapter)
        total = sum(self.teacher_weights.values())
        return sum(w / total * term.value(student_out, {LOGITS: teacher_out[key]}, y, adapter)
                   for key, w in self.teacher_weights.items())

    def forward(self, student_out: dict, teacher_out: dict | None, y):
        labeled = y >= 0 if self.partial_labels else None
        parts = {name: self._term(i, term, student_out, teacher_out, y, labeled)
                 for i, (term, name) in enumerate(zip(self.terms, self.names))}
        counted = [(t, n) for t, n in zip(self.terms, self.names) if not self.hint_only or type(t).hint]
        total = sum(term.weight * parts[name] for term, name in counted)
        return total, parts


def _rows(outputs: dict, keep: torch.Tensor) -> dict:
    """The outputs (logits, tapped maps, other teachers' logits: (N, ...) each) of the rows `keep` marks."""
    return {k: v[keep] for k, v in outputs.items()}
