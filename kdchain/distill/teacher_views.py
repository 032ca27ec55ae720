"""The FKD recipe (Shen & Xing, "A Fast Knowledge Distillation Framework for Visual Recognition", ECCV 2022):
the teacher's outputs for K seeded augmented views of every training image, computed once, before training.

With augmentation on, the teacher's outputs change with every view of an image, so the plain cache does not
apply and the teacher runs live on every batch. Here view v of image i is the augmentation drawn for it by a
generator seeded with (seed, v): it can be drawn again at any time, so only the teacher's outputs are stored,
(K, N, ...) per output. Each epoch every image trains on one of its K views, drawn at random; the student sees
exactly the view whose outputs are read, and no teacher forward runs during training.

The outputs are stored per teacher as float16 .npy files in a folder beside its checkpoint
(kdchain.students.view_store), keyed by its weights, the data, the chain's seed, K, the tapped nodes and the
precision. Every student of that teacher reads the same files: search trials, a later chain run, a generation
taught by all its ancestors (each ancestor's views were stored when it taught the generation after it, so only
the newest teacher's are computed), several processes. The first one computes them under a file lock, writes
them to a temporary folder and renames it into place.
"""

import json
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kdchain.data import Split
from kdchain.distill.device import autocast
from kdchain.distill.teacher import free_disk_mb
from kdchain.locks import held

VIEWS_VERSION = 1  # how views are drawn; a change must not read outputs stored for other views
DONE = "views.json"  # written last: a folder without it is incomplete


@dataclass
class ViewStore:
    """Where each teacher's stored views live (direct teacher first, then the other teachers of `teachers:
    ancestors`, oldest first; None: computed and kept in memory only) and the seed the views are drawn with."""
    folders: list = field(default_factory=list)  # [Path | None] per teacher
    seed: int = 0


def view_params(augmentation, n: int, seed: int, view: int, device) -> dict[str, torch.Tensor]:
    """The augmentation of view `view` for all n images, the same every time it is drawn."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + view)
    return augmentation.draw(n, generator, device)


def all_view_params(augmentation, n: int, seed: int, k: int, device) -> dict[str, torch.Tensor]:
    """{name: (K, N, ...)}: every view's random choices, stacked (a few bytes per image and view)."""
    views = [view_params(augmentation, n, seed, v, device) for v in range(k)]
    return {name: torch.stack([p[name] for p in views]) for name in views[0]}


def views_plan(mode: str, k: int, n: int, shapes: dict[str, tuple], budget_mb: float,
               folder: Path | None) -> tuple[str | None, str]:
    """(where, why): "memory" (float32 on the device), "disk" (float16 memory-mapped, read a batch at a time) or
    None (the teacher runs live). Stored views are kept on disk whenever there is a folder for them."""
    values = k * n * sum(math.prod(s) for s in shapes.values())
    mb, disk_mb = values * 4 / 2**20, values * 2 / 2**20
    what = f"teacher outputs of {k} augmented views of {n} images"
    if mode == "off":
        return None, "live: cache off (teacher_views needs it)"
    if folder is not None:
        free_mb = free_disk_mb(folder)
        if not (folder / DONE).is_file() and disk_mb > 0.9 * free_mb:
            return None, f"live: the {what} need {disk_mb:.0f} MB in float16, over the {free_mb:.0f} MB free disk"
        where = "memory" if mode == "on" or (mode == "auto" and mb <= budget_mb) else "disk"
        return where, f"stored views: {what} ({disk_mb:.1f} MB float16 in {folder})"
    if mode == "on" or (mode == "auto" and mb <= budget_mb):
        return "memory", f"stored views: {what} ({mb:.1f} MB in memory)"
    return None, f"live: the {what} need {mb:.0f} MB, over cache_memory_mb {budget_mb:g}, and there is no folder"


@torch.inference_mode()
def _compute(teacher_fwd, split: Split, augmentation, k: int, seed: int, device, precision: str,
             batch_size: int, out_dir: Path | None) -> dict[str, torch.Tensor | np.ndarray]:
    """{name: (K, N, ...)}: float32 tensors, or float16 .npy memory maps in `out_dir`."""
    n = len(split)
    outputs: dict = {}
    for v in range(k):
        params = view_params(augmentation, n, seed, v, device)
        with autocast(device, precision):
            for i in range(0, n, batch_size):
                x = split.inputs(split.x[i:i + batch_size])
                x = augmentation.apply(x, {name: p[i:i + batch_size] for name, p in params.items()})
                for name, value in teacher_fwd(x).items():
                    if name not in outputs:
                        shape = (k, n, *value.shape[1:])
                        outputs[name] = (torch.empty(shape, device=device) if out_dir is None else
                                         np.lib.format.open_memmap(out_dir / f"{len(outputs)}.npy", mode="w+",
                                                                   dtype=np.float16, shape=shape))
                    if out_dir is None:
                        outputs[name][v, i:i + len(value)] = value.float()
                    else:
                        outputs[name][v, i:i + len(value)] = value.to("cpu", torch.float16).numpy()
    return outputs


def teacher_views(teacher_fwd, split: Split, augmentation, k: int, seed: int, device, precision: str,
                  where: str, folder: Path | None, batch_size: int = 256) -> tuple[dict[str, torch.Tensor], bool]:
    """({name: (K, N, ...)} of the teacher over K views of the in-memory split, read-from-store?). `where`:
    "memory" = float32 on the device, "disk" = float16 memory maps. With `folder`, the outputs are stored
    there (or read from there when an earlier student stored them)."""
    if folder is None:
        with torch.inference_mode(False):
            return {name: t.clone() for name, t in _compute(teacher_fwd, split, augmentation, k, seed, device,
                                                             precision, batch_size, None).items()}, False
    read = True
    with held(folder.with_name(folder.name + ".lock"), f"teacher views {folder.name}"):
        if not (folder / DONE).is_file():
            read = False
            tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{threading.get_ident()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            t0 = time.perf_counter()
            names = list(_compute(teacher_fwd, split, augmentation, k, seed, device, precision, batch_size, tmp))
            (tmp / DONE).write_text(json.dumps({"outputs": names, "views": k, "images": len(split),
                                                "seconds": round(time.perf_counter() - t0, 1)}) + "\n")
            shutil.rmtree(folder, ignore_errors=True)  # a folder without DONE: a crashed writer's
            tmp.rename(folder)
    names = json.loads((folder / DONE).read_text())["outputs"]
    with torch.inference_mode(False):
        if where == "memory":
            return {name: torch.from_numpy(np.load(folder / f"{i}.npy")).to(device).float()
                    for i, name in enumerate(names)}, read
        # copy-on-write maps: torch wants writable arrays; nothing is ever written back
        return {name: torch.from_numpy(np.load(folder / f"{i}.npy", mmap_mode="c"))
                for i, name in enumerate(names)}, read
