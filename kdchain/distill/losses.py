"""Loss terms keyed by the spec's `kind`, and the weighted sum a generation trains on.

Each term sees the student's outputs, the teacher's outputs (or None) and the labels; outputs are dicts
{"logits": (N, K), node: (N, C, H, W)} from `kdchain.models.taps.Tapped`.
"""

import torch
import torch.nn.functional as F
from torch import nn

from kdchain.spec import AtLoss, CeLoss, DkdLoss, FeatureLoss, FitnetLoss, KdLoss, RkdLoss

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


class HintRegressor(nn.Module):
    """FitNets' regressor r: a 3x3 conv from the student's guided layer (N, Cs, Hs, Ws) to the teacher's hint
    channels Ct, then a resize to (Ht, Wt) when the maps differ in size."""

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]):
        super().__init__()
        self.conv = nn.Conv2d(student_shape[0], teacher_shape[0], 3, padding=1, bias=False)
        self.size = tuple(teacher_shape[1:]) if tuple(student_shape[1:]) != tuple(teacher_shape[1:]) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.adaptive_avg_pool2d(x, self.size) if self.size is not None else x


def fitnet_loss(student_map: torch.Tensor, teacher_map: torch.Tensor, regressor: nn.Module) -> torch.Tensor:
    """Romero et al. 2015, "FitNets: Hints for Thin Deep Nets", eq. 3: 1/2 ||u_h(x) - r(v_g(x))||^2, here averaged
    over the elements (not summed) so that its weight does not depend on the size of the map."""
    return 0.5 * F.mse_loss(regressor(student_map), teacher_map)


def attention_map(fmap: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W): mean_c |A_c|^p, L2-normalised per image (Zagoruyko & Komodakis 2017, eq. 2)."""
    return F.normalize(fmap.abs().pow(p).mean(1).flatten(1), dim=1)


def at_loss(student_map: torch.Tensor, teacher_map: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko & Komodakis 2017, "Paying More Attention to Attention", eq. 2 as in their code:
    mean over images and positions of (Q_s/||Q_s|| - Q_t/||Q_t||)^2. A student map of another spatial size is
    average-pooled to the teacher's first; channels may differ (attention sums them away)."""
    if student_map.shape[-2:] != teacher_map.shape[-2:]:
        student_map = F.adaptive_avg_pool2d(student_map, teacher_map.shape[-2:])
    return (attention_map(student_map, p) - attention_map(teacher_map, p)).pow(2).mean()


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, alpha: float,
             beta: float, temperature: float) -> torch.Tensor:
    """Zhao et al. 2022, "Decoupled Knowledge Distillation", eq. 7: alpha * TCKD + beta * NCKD, times T^2.

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
    """Park et al. 2019, "Relational Knowledge Distillation", eqs. 4-7: distance_weight * Huber(psi_D) +
    angle_weight * Huber(psi_A) over the batch's pairs and triplets (Huber = smooth L1, delta 1)."""
    with torch.no_grad():
        t_d, t_a = _normalised_distances(teacher_emb), _angles(teacher_emb)
    s_d, s_a = _normalised_distances(student_emb), _angles(student_emb)
    return distance_weight * F.smooth_l1_loss(s_d, t_d) + angle_weight * F.smooth_l1_loss(s_a, t_a)


def _ce(term: CeLoss, student_out, teacher_out, y, adapter):
    return F.cross_entropy(student_out[LOGITS], y, label_smoothing=term.label_smoothing)


def _kd(term: KdLoss, student_out, teacher_out, y, adapter):
    return kd_loss(student_out[LOGITS], teacher_out[LOGITS], term.temperature)


def _feature(term: FeatureLoss, student_out, teacher_out, y, adapter):
    return feature_loss(student_out[term.student_node], teacher_out[term.teacher_node], adapter)


def _fitnet(term: FitnetLoss, student_out, teacher_out, y, adapter):
    return fitnet_loss(student_out[term.student_node], teacher_out[term.teacher_node], adapter)


def _at(term: AtLoss, student_out, teacher_out, y, adapter):
    return at_loss(student_out[term.student_node], teacher_out[term.teacher_node], term.p)


def _dkd(term: DkdLoss, student_out, teacher_out, y, adapter):
    return dkd_loss(student_out[LOGITS], teacher_out[LOGITS], y, term.alpha, term.beta, term.temperature)


def _rkd(term: RkdLoss, student_out, teacher_out, y, adapter):
    return rkd_loss(embedding(student_out[term.student_node]), embedding(teacher_out[term.teacher_node]),
                    term.distance_weight, term.angle_weight)


# the spec's loss `kind` -> fn(term spec, student outputs, teacher outputs, labels, adapter or None)
TERMS = {"ce": _ce, "kd": _kd, "feature": _feature, "fitnet": _fitnet, "at": _at, "dkd": _dkd, "rkd": _rkd}
TEACHER_TERMS = {"kd", "feature", "fitnet", "at", "dkd", "rkd"}  # kinds that need the teacher's outputs
LOGIT_TERMS = {"kd", "dkd"}  # kinds every teacher of a generation teaches (teachers: ancestors)
ADAPTERS = {"feature": FeatureAdapter, "fitnet": HintRegressor}  # kinds with a trained map student -> teacher


def teacher_key(i: int) -> str:
    """Output key of the logits of extra teacher i (teachers: ancestors); the direct teacher's are "logits"."""
    return f"{LOGITS}@{i}"


class DistillLoss(nn.Module):
    """sum_i weight_i * term_i; `forward` returns (total, {term name: value}) without host synchronisation.

    `terms` are loss specs with their nodes resolved; `shapes[i]` = (student map shape, teacher map shape) of
    feature/fitnet term i, for its adapter. `teacher_weights` = {teacher output key: weight} when several teachers
    teach the logit terms (the direct teacher's key is "logits", extra teacher i's `teacher_key(i)`).
    `hint_epochs` > 0: `set_epoch(e)` with e <= hint_epochs counts the fitnet terms alone (FitNets stage 1).
    """

    def __init__(self, terms: list, shapes: dict[int, tuple[tuple, tuple]] | None = None,
                 teacher_weights: dict[str, float] | None = None):
        super().__init__()
        self.terms = terms
        # adapters are trained with the student; keyed by term index
        self.adapters = nn.ModuleDict({str(i): ADAPTERS[terms[i].kind](*shp) for i, shp in (shapes or {}).items()})
        kinds = [t.kind for t in terms]
        self.names = [k if kinds.count(k) == 1 else f"{k}_{i}" for i, k in enumerate(kinds)]
        self.teacher_weights = teacher_weights or {LOGITS: 1.0}
        self.hint_epochs = max([t.hint_epochs for t in terms if isinstance(t, FitnetLoss)], default=0)
        self.hint_only = False

    def set_epoch(self, epoch: int) -> None:
        """1-based epoch about to be trained: the hint stage of FitNets lasts `hint_epochs` epochs."""
        self.hint_only = epoch <= self.hint_epochs

    @property
    def needs_teacher(self) -> bool:
        return any(t.kind in TEACHER_TERMS for t in self.terms)

    def nodes(self, side: str) -> list[str]:
        """The feature nodes this loss reads from the `student` or the `teacher`."""
        return sorted({getattr(t, f"{side}_node") for t in self.terms if getattr(t, f"{side}_node", None)})

    def _term(self, i: int, term, student_out: dict, teacher_out: dict | None, y: torch.Tensor):
        adapter = self.adapters[str(i)] if str(i) in self.adapters else None
        if term.kind not in LOGIT_TERMS or len(self.teacher_weights) == 1:
            return TERMS[term.kind](term, student_out, teacher_out, y, adapter)
        total = sum(self.teacher_weights.values())
        return sum(w / total * TERMS[term.kind](term, student_out, {LOGITS: teacher_out[key]}, y, adapter)
                   for key, w in self.teacher_weights.items())

    def forward(self, student_out: dict, teacher_out: dict | None, y: torch.Tensor):
        parts = {name: self._term(i, term, student_out, teacher_out, y)
                 for i, (term, name) in enumerate(zip(self.terms, self.names))}
        counted = [(t, n) for t, n in zip(self.terms, self.names) if not self.hint_only or t.kind == "fitnet"]
        total = sum(term.weight * parts[name] for term, name in counted)
        return total, parts
