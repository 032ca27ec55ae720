"""The teacher side of a step: several teachers as one module, their outputs by node, and the teacher-output cache.

When the student sees the un-augmented training split, the teacher's outputs (logits and tapped maps) are the
same every epoch, so they are computed once, kept on the device as (N, ...) tensors (or, past the memory budget,
in float16 memory-mapped files under the generation's workdir) and indexed with the same batch indices as the
data. An `augment` function takes the other path: the teacher runs live on the very same
augmented batch as the student.
"""

import math
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from kdchain.data import Split
from kdchain.distill.device import autocast, in_format, memory_format
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
    fmt = memory_format(model)  # the input in the model's own layout
    if nodes:
        tapped = Tapped(model, nodes)
        return lambda x: tapped(in_format(x, fmt))
    return lambda x: {LOGITS: model(in_format(x, fmt))}


def teacher_cache_plan(mode: str, augment: Augment | None, n: int, shapes: dict[str, tuple], budget_mb: float,
                       spill_dir: Path | None = None) -> tuple[str | None, str]:
    """(where, why): "memory" (float32 tensors on the device), "disk" (float16 files under `spill_dir`, read back a
    batch at a time) or None (the teacher runs live). `shapes` are the per-image shapes of the outputs the loss
    reads. auto: memory within `budget_mb`, disk beyond it when the files fit the free disk; disk: always disk."""
    if augment is not None:
        return None, "live: augmentation (the teacher sees the student's augmented view)"
    if mode == "off":
        return None, "live: cache off"
    values = n * sum(math.prod(s) for s in shapes.values())
    mb, disk_mb = values * 4 / 2**20, values * 2 / 2**20  # float32 in memory, float16 on disk
    if mode == "on" or (mode == "auto" and mb <= budget_mb):
        return "memory", f"cached: {', '.join(shapes)} of {n} images, {mb:.2f} MB"
    over = f"outputs need {mb:.0f} MB, over cache_memory_mb {budget_mb:g}" if mode == "auto" else "cache: disk"
    if spill_dir is None:
        return None, f"live: {over}, and no workdir to spill them to"
    free_mb = free_disk_mb(spill_dir)
    if disk_mb > 0.9 * free_mb:
        return None, f"live: {over}, and their {disk_mb:.0f} MB in float16 do not fit the {free_mb:.0f} MB free disk"
    return "disk", f"cached on disk: {', '.join(shapes)} of {n} images, {disk_mb:.0f} MB float16 in {spill_dir}"


def free_disk_mb(path: Path) -> float:
    """Free MB on the disk that `path` is on, or will be on once created (its nearest existing parent's)."""
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free / 2**20


@torch.inference_mode()
def teacher_outputs(teacher_fwd, split: Split, device: torch.device, batch_size: int = 1024,
                    precision: str = "auto", spill_dir: Path | None = None) -> dict:
    """{name: (N, ...)} of the teacher over the whole in-memory split, in large batches: float32 tensors on the
    device, or with `spill_dir` float16 memory-mapped files there (one per output; RAM holds a batch, the page
    cache what fits). Normal tensors (not inference tensors), so that batches indexed from them can enter the
    autograd graph of the loss."""
    parts: dict[str, list] = {}
    files: dict[str, np.memmap] = {}
    with autocast(device, precision):
        for i in range(0, len(split), batch_size):
            for k, v in teacher_fwd(split.inputs(split.x[i:i + batch_size])).items():
                if spill_dir is None:
                    parts.setdefault(k, []).append(v.float())
                    continue
                if k not in files:
                    spill_dir.mkdir(parents=True, exist_ok=True)
                    files[k] = np.lib.format.open_memmap(spill_dir / f"{len(files)}.npy", mode="w+",
                                                         dtype=np.float16, shape=(len(split), *v.shape[1:]))
                files[k][i:i + len(v)] = v.to("cpu", torch.float16).numpy()
    with torch.inference_mode(False):
        if files:
            return {k: torch.from_numpy(f) for k, f in files.items()}
        return {k: torch.cat(v).clone() for k, v in parts.items()}
