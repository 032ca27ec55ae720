"""fit / evaluate: pure torch, seeded; reports through a callback and knows nothing of MLflow or Prefect.

The training split stays resident on the device as one tensor and is batched by a seeded permutation.
Inside the step nothing synchronises with the host: per-epoch sums stay on the device and are read once at
the end of the epoch. With `state_path`, the full training state is written atomically after every epoch
and a later call resumes from it.
"""

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kdchain.data import DataBundle, Split, batches
from kdchain.losses import LOGITS, DistillLoss
from kdchain.specs import TrainSpec
from kdchain.taps import Tapped


class Diverged(RuntimeError):
    """A non-finite loss; the message names the epoch and the loss term."""


class StateUnreadable(Exception):
    """A resume state that cannot be read (truncated, foreign); training starts the generation over."""


@dataclass
class EpochReport:
    epoch: int  # 1-based
    epochs: int
    train_loss: float
    val_accuracy: float
    parts: dict[str, float]  # mean of each loss term over the epoch
    seconds: float


@dataclass
class FitResult:
    history: list[EpochReport] = field(default_factory=list)
    resumed_from_epoch: int = 0  # epochs restored from state_path instead of trained
    restored: list[EpochReport] = field(default_factory=list)  # the reports of those epochs, from the state
    train_seconds: float = 0.0


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_threads(threads: int | None) -> None:
    torch.set_num_threads(threads or os.cpu_count() or 1)


def outputs_of(model: nn.Module, nodes: list[str]) -> Callable[[torch.Tensor], dict]:
    """x -> {"logits": ..., node: ...}; the plain forward when no feature map is needed."""
    if nodes:
        return Tapped(model, nodes)
    return lambda x: {LOGITS: model(x)}


def make_optimizer(params, spec: TrainSpec) -> torch.optim.Optimizer:
    # foreach kernels: one launch per parameter group instead of one per tensor
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                               nesterov=True, foreach=True)
    cls = torch.optim.AdamW if spec.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=spec.lr, weight_decay=spec.weight_decay, foreach=True)


def make_schedule(opt: torch.optim.Optimizer, spec: TrainSpec, steps: int):
    if spec.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=steps)
    if spec.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits (N, K) in eval mode, in large batches."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def evaluate(model: nn.Module, split: Split, batch_size: int = 1024) -> float:
    """Top-1 accuracy in [0, 1]."""
    pred = predict(model, split.x, batch_size).argmax(1)
    return (pred == split.y).float().mean().item()


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file, fsync, rename: a crash leaves the old file or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_train_state(path: Path | None, device: torch.device | str = "cpu") -> dict | None:
    """The state `fit` saved after its last finished epoch, or None when there is none.

    Read with weights_only=True: tensors, numbers, strings and containers only, never pickled code.
    """
    if path is None or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
            raise ValueError("not a kdchain training state")
    except Exception as e:  # truncated file, foreign pickle
        raise StateUnreadable(f"resume state {path} is unreadable ({type(e).__name__}: "
                              f"{next((x.strip() for x in str(e).splitlines() if x.strip()), '')[:160]})") from None
    return state


def _report_dict(r: EpochReport) -> dict:
    return {"epoch": r.epoch, "epochs": r.epochs, "train_loss": r.train_loss, "val_accuracy": r.val_accuracy,
            "parts": dict(r.parts), "seconds": r.seconds}


def fit(student: nn.Module, teacher: nn.Module | None, loss: DistillLoss, data: DataBundle, train: TrainSpec,
        seed: int = 0, on_epoch: Callable[[EpochReport], None] | None = None,
        device: torch.device | str = "cpu", state_path: Path | None = None) -> FitResult:
    """Train `student` on `loss` (the teacher's outputs feed it when it needs them); returns the history."""
    device = torch.device(device)
    set_threads(train.threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)

    student.to(device).train()
    loss.to(device).train()
    student_fwd = outputs_of(student, loss.nodes("student"))
    teacher_fwd = None
    if loss.needs_teacher:
        if teacher is None:
            raise ValueError("this loss needs a teacher")
        teacher.to(device).eval()
        teacher_fwd = outputs_of(teacher, loss.nodes("teacher"))

    train_split = data.train.to(device)
    val_split = data.val.to(device)
    steps_per_epoch = math.ceil(len(train_split) / train.batch_size)
    opt = make_optimizer(list(student.parameters()) + list(loss.parameters()), train)
    sched = make_schedule(opt, train, steps_per_epoch * train.epochs)

    result, start_epoch = FitResult(), 0
    try:
        state = load_train_state(state_path, device)
    except StateUnreadable:  # the caller has said so; the epochs it held are trained again
        Path(state_path).unlink(missing_ok=True)
        state = None
    if state is not None:
        student.load_state_dict(state["student"])
        loss.load_state_dict(state["loss"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        gen.set_state(state["batch_rng"].cpu())  # RNG states are CPU byte tensors whatever the map_location
        torch.set_rng_state(state["torch_rng"].cpu())
        start_epoch = result.resumed_from_epoch = state["epoch"]
        result.restored = [EpochReport(**r) for r in state.get("history", [])]

    for epoch in range(start_epoch + 1, train.epochs + 1):
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        part_sums = {name: torch.zeros((), device=device) for name in loss.names}
        for x, y in batches(train_split, train.batch_size, gen):
            teacher_out = None
            if teacher_fwd is not None:
                with torch.inference_mode():
                    teacher_out = teacher_fwd(x)
                # inference tensors cannot be saved for backward: clone into normal tensors
                teacher_out = {k: v.clone() for k, v in teacher_out.items()}
            total, parts = loss(student_fwd(x), teacher_out, y)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            sched.step()
            loss_sum += total.detach() * len(y)
            for name, value in parts.items():
                part_sums[name] += value.detach() * len(y)

        # the one host synchronisation of the epoch
        n = len(train_split)
        parts_mean = {name: (s / n).item() for name, s in part_sums.items()}
        train_loss = (loss_sum / n).item()
        if not math.isfinite(train_loss):
            bad = [name for name, v in parts_mean.items() if not math.isfinite(v)] or ["total"]
            raise Diverged(f"loss became {train_loss} in epoch {epoch} (term: {', '.join(bad)}); "
                           f"lower train.lr or the weight of {bad[0]}")
        report = EpochReport(epoch, train.epochs, train_loss, evaluate(student, val_split), parts_mean,
                             time.perf_counter() - t0)
        result.history.append(report)
        result.train_seconds += report.seconds
        if state_path is not None:
            atomic_save({"student": student.state_dict(), "loss": loss.state_dict(), "optimizer": opt.state_dict(),
                         "schedule": sched.state_dict(), "batch_rng": gen.get_state(),
                         "torch_rng": torch.get_rng_state(), "epoch": epoch,
                         "history": [_report_dict(r) for r in result.restored + result.history]}, Path(state_path))
        if on_epoch is not None:
            on_epoch(report)
    return result
