"""The teacher side of a step: several teachers as one module, their outputs by node, and the teacher-output cache.

When the student sees the un-augmented training split, the teacher's outputs (logits and tapped maps) are the
same every epoch, so they are computed once, kept on the device as (N, ...) tensors and indexed with the same
batch indices as the data. An `augment` function takes the other path: the teacher runs live on the very same
augmented batch as the student.
"""

import math
from typing import Callable

import torch
from torch import nn

from kdchain.data import Split
from kdchain.distill.device import autocast, channels_last
from kdchain.distill.losses import LOGITS, teacher_key
from kdchain.models.taps import Tapped

# x (B, C, H, W), y (B,) -> the augmented batch; teacher and student both see its output
Augment = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Teachers(nn.Module):
    """Several teachers of one generation (teachers: ancestors): the direct one, whose tapped maps the loss reads,
    and extra ones, whose logits join the outputs as `teacher_key(i)`."""

    def __init__(self, direct: nn.Module, extra: list[nn.Module]):
        super().__init__()
        self.direct = direct
        self.extra = nn.ModuleList(extra)


def outputs_of(model: nn.Module, nodes: list[str]) -> Callable[[torch.Tensor], dict]:
    """x -> {"logits": ..., node: ...}; the plain forward when no feature map is needed."""
    if isinstance(model, Teachers):
        direct = outputs_of(model.direct, nodes)
        return lambda x: direct(x) | {teacher_key(i): m(x) for i, m in enumerate(model.extra)}
    if nodes:
        return Tapped(model, nodes)
    return lambda x: {LOGITS: model(x)}


def teacher_cache_plan(mode: str, augment: Augment | None, n: int, shapes: dict[str, tuple], budget_mb: float
                       ) -> tuple[bool, str]:
    """(cache?, why): `shapes` are the per-image shapes of the teacher outputs the loss reads."""
    if augment is not None:
        return False, "live: augmentation (the teacher sees the student's augmented view)"
    if mode == "off":
        return False, "live: cache off"
    mb = n * sum(math.prod(s) for s in shapes.values()) * 4 / 2**20  # float32
    if mode == "auto" and mb > budget_mb:
        return False, f"live: outputs need {mb:.0f} MB, over cache_memory_mb {budget_mb:g}"
    return True, f"cached: {', '.join(shapes)} of {n} images, {mb:.2f} MB"


@torch.inference_mode()
def teacher_outputs(teacher_fwd, split: Split, device: torch.device, batch_size: int = 1024,
                    precision: str = "auto") -> dict:
    """{name: (N, ...) float32} of the teacher over the whole in-memory split, in large batches; normal tensors
    (not inference tensors) so that batches indexed from them can enter the autograd graph of the loss."""
    parts: dict[str, list] = {}
    with autocast(device, precision):
        for i in range(0, len(split), batch_size):
            for k, v in teacher_fwd(channels_last(split.inputs(split.x[i:i + batch_size]))).items():
                parts.setdefault(k, []).append(v.float())
    with torch.inference_mode(False):
        return {k: torch.cat(v).clone() for k, v in parts.items()}
