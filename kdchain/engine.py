"""fit / evaluate: pure torch, seeded; reports through a callback and knows nothing of MLflow or Prefect.

The training split stays resident on the device as one tensor (channels_last) and is batched by the indices
of a seeded permutation. Inside the step nothing synchronises with the host: per-epoch sums stay on the device
and are read once at the end of the epoch. The forward runs under bf16 autocast where the hardware has bf16
(CUDA; AVX512-BF16/AMX CPUs; `train.precision`); on CUDA the optimizer is fused; `train.compile` wraps the
student's forward in torch.compile. Accuracy is measured in float32, as the exported model runs.

Teacher-output cache: when the student sees the un-augmented training split, the teacher's outputs (logits and
tapped maps) are the same every epoch, so they are computed once, kept on the device as (N, ...) tensors and
indexed with the same batch indices as the data. An `augment` function takes the other, separate path: the
teacher runs live on the very same augmented batch as the student.

With `state_path`, the full training state is written atomically after every epoch and a later call resumes
from it.
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
from kdchain.losses import LOGITS, DistillLoss, teacher_key
from kdchain.specs import TrainSpec
from kdchain.taps import Tapped, feature_shapes


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
    teacher: str = "none"  # how the teacher's outputs were obtained: none, cached, or live (and why)
    cache_seconds: float = 0.0  # time to fill the teacher-output cache


# x (B, C, H, W), y (B,) -> the augmented batch; teacher and student both see its output
Augment = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _cpu_jiffies() -> tuple[int, int]:
    """(idle, total) CPU time of the whole machine so far, from /proc/stat (Linux)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    return ticks[3] + ticks[4], sum(ticks)  # idle + iowait, all


def free_cores(window_s: float = 0.1) -> int:
    """Cores idle right now (over `window_s`), at least 1. On a shared box, more OpenMP threads than free cores
    makes every op wait for descheduled threads: 10-50x slower, measured here. Measured now rather than from the
    load average, which still counts a process that ended a minute ago (and halved our threads after each run)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        idle0, total0 = _cpu_jiffies()
        time.sleep(window_s)
        idle1, total1 = _cpu_jiffies()
        busy = (os.cpu_count() or cores) * (1 - (idle1 - idle0) / max(1, total1 - total0))
    except (OSError, ValueError, IndexError):  # no /proc: the 1-minute load average
        try:
            busy = os.getloadavg()[0]
        except OSError:
            busy = 0
    return max(1, min(cores, cores - round(busy)))


def set_threads(threads: int | None) -> None:
    torch.set_num_threads(threads or free_cores())


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


def make_optimizer(params, spec: TrainSpec, device: torch.device | str = "cpu") -> torch.optim.Optimizer:
    # CUDA: fused kernels (one launch for the whole step); CPU: foreach (one op per group instead of per tensor)
    kind = {"fused": True} if torch.device(device).type == "cuda" else {"foreach": True}
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                               nesterov=True, **kind)
    cls = torch.optim.AdamW if spec.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=spec.lr, weight_decay=spec.weight_decay, **kind)


def native_bf16(device: torch.device) -> bool:
    """Does this device compute bf16 convolutions natively? CUDA: yes; CPU: when oneDNN has bf16 kernels for it
    (AVX512-BF16 or AMX). Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return True
    try:
        return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_bf16(device: torch.device, precision: str = "auto") -> bool:
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast when `use_bf16`; conv and matmul run in bf16, losses and reductions stay float32. Measured
    on this AVX512-BF16 CPU: the digits teacher's step 26.5 -> 16.0 ms, the marks teacher's 179 -> 128 ms."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(device, precision))


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def batch_indices(n: int, batch_size: int, generator: torch.Generator, device: torch.device):
    """Index tensors of a seeded permutation, batch by batch (the same order as kdchain.data.batches)."""
    order = torch.randperm(n, generator=generator, device="cpu").to(device)
    return order.split(batch_size)


def epoch_batches(split, batch_size: int, generator: torch.Generator, device: torch.device):
    """(indices or None, x, y) per training batch: in-memory splits by index (the teacher cache is indexed the
    same way), streamed splits through their loader."""
    if hasattr(split, "stream"):
        for x, y in batches(split, batch_size, generator):
            yield None, x.to(device), y.to(device)
        return
    for idx in batch_indices(len(split), batch_size, generator, device):
        yield idx, split.inputs(split.x[idx]), split.y[idx]


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


def make_schedule(opt: torch.optim.Optimizer, spec: TrainSpec, steps: int):
    if spec.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=steps)
    if spec.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def eval_batch_size(input_shape) -> int:
    # 1024 at 32x32 and below; fewer for large images (VGG at 224x224 holds ~13 MB of activations per image)
    return max(16, min(1024, 1024 * 32 * 32 // (input_shape[-1] * input_shape[-2])))


@torch.inference_mode()
def predict(model: nn.Module, x, batch_size: int | None = None) -> torch.Tensor:
    """Logits (N, K) in eval mode, in large batches; `x` is a tensor (N, C, H, W) or a Split."""
    was_training = model.training
    model.eval()
    if isinstance(x, torch.Tensor):
        bs = batch_size or eval_batch_size(x.shape)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            out = torch.cat([model(channels_last(x[i:i + bs])).float() for i in range(0, len(x), bs)])
    else:
        out = predict_split(model, x, batch_size)[0]
    model.train(was_training)
    return out


@torch.inference_mode()
def predict_split(model: nn.Module, split, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, K), labels (N,)) over a split in its order; a streamed split may leave out unreadable files."""
    was_training = model.training
    model.eval()
    bs = batch_size or eval_batch_size(split.input_shape)
    logits, labels = [], []
    for xb, yb in batches(split, bs, shuffle=False):
        logits.append(model(xb))
        labels.append(yb)
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, split: Split, batch_size: int | None = None) -> float:
    """Top-1 accuracy in [0, 1]."""
    logits, y = predict_split(model, split, batch_size)
    return (logits.argmax(1) == y).float().mean().item()


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
        device: torch.device | str = "cpu", state_path: Path | None = None,
        augment: Augment | None = None) -> FitResult:
    """Train `student` on `loss` (the teacher's outputs feed it when it needs them); returns the history.

    `augment(x, y)`, when given, is applied to every training batch; the teacher-output cache is then bypassed."""
    device = torch.device(device)
    set_threads(train.threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)

    student.to(device, memory_format=torch.channels_last).train()
    loss.to(device).train()
    student_fwd = outputs_of(student, loss.nodes("student"))
    if train.compile:
        student_fwd = torch.compile(student_fwd)
    # a split streamed from disk (kdchain.images.StreamSplit) stays where it is; in-memory ones move to the device
    streamed = hasattr(data.train, "stream")
    train_split = data.train if streamed else data.train.to(device)
    val_split = data.val if hasattr(data.val, "stream") else data.val.to(device)
    if augment is None and data.augment is not None:  # the data set's per-batch augmentation (kdchain.augment)
        augment = lambda x, y: (data.augment(x), y)  # noqa: E731
    result = FitResult()

    teacher_fwd, cached = None, None
    if loss.needs_teacher:
        if teacher is None:
            raise ValueError("this loss needs a teacher")
        teacher.to(device, memory_format=torch.channels_last).eval()
        teacher_fwd = outputs_of(teacher, loss.nodes("teacher"))
        direct = teacher.direct if isinstance(teacher, Teachers) else teacher
        extra = len(teacher.extra) if isinstance(teacher, Teachers) else 0
        shapes = {LOGITS: (data.num_classes,)} | {n: tuple(s) for n, s in
                                                  feature_shapes(direct, loss.nodes("teacher"),
                                                                 data.input_shape).items()}
        shapes |= {teacher_key(i): (data.num_classes,) for i in range(extra)}
        use_cache, result.teacher = teacher_cache_plan(train.cache, augment, len(train_split), shapes,
                                                       train.cache_memory_mb)
        if use_cache and streamed:
            use_cache, result.teacher = False, "live: the training split is streamed from disk"
        if use_cache:
            t0 = time.perf_counter()
            cached = teacher_outputs(teacher_fwd, train_split, device, precision=train.precision)  # {name: (N, ...)}
            result.cache_seconds = time.perf_counter() - t0

    steps_per_epoch = math.ceil(len(train_split) / train.batch_size)
    opt = make_optimizer(list(student.parameters()) + list(loss.parameters()), train, device)
    sched = make_schedule(opt, train, steps_per_epoch * train.epochs)

    start_epoch = 0
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
        loss.set_epoch(epoch)  # FitNets: the first hint_epochs train on the hint alone
        loss_sum = torch.zeros((), device=device)
        part_sums = {name: torch.zeros((), device=device) for name in loss.names}
        for idx, x, y in epoch_batches(train_split, train.batch_size, gen, device):
            teacher_out = None
            if augment is not None:
                x, y = augment(x, y)
            x = channels_last(x)
            if cached is not None:
                teacher_out = {k: v[idx] for k, v in cached.items()}  # same indices as the batch
            elif teacher_fwd is not None:
                with torch.inference_mode(), autocast(device, train.precision):
                    teacher_out = teacher_fwd(x)  # live, on the very batch the student sees
                # inference tensors cannot be saved for backward: clone into normal tensors
                teacher_out = {k: v.float().clone() for k, v in teacher_out.items()}
            with autocast(device, train.precision):
                student_out = student_fwd(x)
            student_out = {k: v.float() for k, v in student_out.items()}
            total, parts = loss(student_out, teacher_out, y)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            sched.step()
            loss_sum += total.detach() * len(y)
            for name, value in parts.items():
                part_sums[name] += value.detach() * len(y)

        # the one host synchronisation of the epoch
        n = max(1, len(train_split))
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
