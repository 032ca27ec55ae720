"""fit: pure torch, seeded; reports through a callback and knows nothing of MLflow or Prefect.

The training split stays resident on the device as one tensor and is batched by the indices
of a seeded permutation. Inside the step nothing synchronises with the host: per-epoch sums stay on the device
and are read once at the end of the epoch. The forward runs under bf16 autocast where the hardware has bf16
(CUDA; AVX512-BF16/AMX CPUs; `train.precision`); on CUDA the optimizer is fused; `train.compile` wraps the
student's forward in torch.compile. Accuracy is measured in float32, as the exported model runs. The teacher's
outputs come from kdchain.distill.teacher (cached once, or live on the augmented batch).

With `state_path`, what resuming needs (trainable weights, buffers, optimizer, schedule, RNG; not frozen weights) is
written atomically after every epoch, replacing the last epoch's, and a later call resumes
from it.

Under torch.distributed (kdchain.distill.distributed: one process per rank) the same loop trains data-parallel:
each rank takes its part of every batch of the same seeded permutation, the student is in DistributedDataParallel,
loss sums and validation counts are summed over the ranks (the figures one process would report), the teacher
cache is computed a shard per rank and gathered, and rank 0 alone writes the resume state.
"""

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kdchain.data import DataBundle, batches
from kdchain.distill.device import autocast, place, set_threads
from kdchain.distill.distributed import (all_sum, average_grads, data_parallel, gather_rows, rank_and_world,
                                         rows_of_rank, shard)
from kdchain.distill.evaluate import evaluate, predict_split
from kdchain.distill.losses import LOGITS, DistillLoss, teacher_key
from kdchain.distill.state import StateUnreadable, atomic_save, load_train_state, restore_trained, trained_state
from kdchain.distill.teacher import Augment, Teachers, outputs_of, teacher_cache_plan, teacher_outputs
from kdchain.distill.teacher_views import ViewStore, all_view_params, teacher_views, views_plan
from kdchain.models.taps import feature_shapes
from kdchain.spec import TrainSpec


class Diverged(RuntimeError):
    """A non-finite loss; the message names the epoch and the loss term."""


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
    teacher: str = "none"  # how the teacher's outputs were obtained: none, cached, stored views, or live (and why)
    cache_seconds: float = 0.0  # time to fill the teacher-output cache (or to compute or read the stored views)


@dataclass
class StoredViews:
    """The FKD recipe's side of a step (kdchain.distill.teacher_views): the teacher's outputs {name: (K, N, ...)} for K
    seeded augmented views of each training image, and each view's augmentation {name: (K, N, ...)}."""
    outputs: dict
    params: dict
    augmentation: object  # kdchain.data.augment.Augmentation: applies the stored params

    @property
    def k(self) -> int:
        return next(iter(self.outputs.values())).shape[0]

    def batch(self, x: torch.Tensor, idx: torch.Tensor, view: torch.Tensor, device) -> tuple[torch.Tensor, dict]:
        """(the batch as image idx[j]'s view view[j] shows it, the teacher's outputs on exactly that view)."""
        x = self.augmentation.apply(x, {name: p[view, idx] for name, p in self.params.items()})
        out = {}
        for name, t in self.outputs.items():
            at = t.device
            out[name] = t[view.to(at), idx.to(at)].to(device).float()  # a disk map: float16, read for this batch
        return x, out


def make_optimizer(params, spec: TrainSpec, device: torch.device | str = "cpu") -> torch.optim.Optimizer:
    # CUDA: fused kernels (one launch for the whole step); CPU: foreach (one op per group instead of per tensor)
    kind = {"fused": True} if torch.device(device).type == "cuda" else {"foreach": True}
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                               nesterov=True, **kind)
    cls = torch.optim.AdamW if spec.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=spec.lr, weight_decay=spec.weight_decay, **kind)


def batch_indices(n: int, batch_size: int, generator: torch.Generator, device: torch.device):
    """Index tensors of a seeded permutation, batch by batch (the same order as kdchain.data.batches)."""
    order = torch.randperm(n, generator=generator, device="cpu").to(device)
    return order.split(batch_size)


def epoch_batches(split, batch_size: int, generator: torch.Generator, device: torch.device):
    """(indices or None, x, y) per training batch: in-memory splits by index (the teacher cache is indexed the
    same way), streamed splits through their loader."""
    if hasattr(split, "stream"):
        for x, y in batches(split, batch_size, generator):
            yield None, shard(x).to(device), shard(y).to(device)
        return
    for idx in batch_indices(len(split), batch_size, generator, device):
        idx = shard(idx)  # this rank's part (the whole batch in one process)
        yield idx, split.inputs(split.x[idx]), split.y[idx]


def make_schedule(opt: torch.optim.Optimizer, spec: TrainSpec, steps: int):
    if spec.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=steps)
    if spec.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def val_accuracy(student: nn.Module, split) -> float:
    """Top-1 accuracy over the whole split; under torch.distributed each rank scores its rows and the counts are
    summed (a streamed split, or one too small to share, is scored whole by every rank)."""
    rows = None if hasattr(split, "stream") else rows_of_rank(len(split))
    if rows is None:
        return evaluate(student, split)
    logits, y = predict_split(student, type(split)(split.x[rows], split.y[rows], split.transform))
    counts = torch.tensor([(logits.argmax(1) == y).sum().item(), len(y)], dtype=torch.float64, device=y.device)
    all_sum(counts)
    return (counts[0] / counts[1]).item()


def _report_dict(r: EpochReport) -> dict:
    return {"epoch": r.epoch, "epochs": r.epochs, "train_loss": r.train_loss, "val_accuracy": r.val_accuracy,
            "parts": dict(r.parts), "seconds": r.seconds}


def _teacher_side(teacher: nn.Module | None, loss: DistillLoss, data: DataBundle, train_split, streamed: bool,
                  augment: Augment | None, train: TrainSpec, device: torch.device, result: "FitResult",
                  spill_dir: Path | None = None, view_store: ViewStore | None = None, replayable=None):
    """(teacher forward or None, cached outputs {name: (N, ...)} or None, StoredViews or None); says how in
    result.teacher."""
    if not loss.needs_teacher:
        return None, None, None
    if teacher is None:
        raise ValueError("this loss needs a teacher")
    for model in [getattr(teacher, "direct", teacher), *getattr(teacher, "extra", [])]:
        place(model, device).eval()
    teacher.eval()
    teacher_fwd = outputs_of(teacher, loss.nodes("teacher"))
    direct = teacher.direct if isinstance(teacher, Teachers) else teacher
    extra = len(teacher.extra) if isinstance(teacher, Teachers) else 0
    shapes = {LOGITS: (data.num_classes,)} | {n: tuple(s) for n, s in
                                              feature_shapes(direct, loss.nodes("teacher"), data.input_shape).items()}
    shapes |= {teacher_key(i): (data.num_classes,) for i in range(extra)}
    if train.teacher_views and augment is not None:
        return teacher_fwd, None, _stored_views(teacher, loss, train_split, streamed, replayable, train, device,
                                                result, shapes, view_store)
    use_cache, result.teacher = teacher_cache_plan(train.cache, augment, len(train_split), shapes,
                                                   train.cache_memory_mb, spill_dir)
    if use_cache and streamed:
        use_cache, result.teacher = False, "live: the training split is streamed from disk"
    if not use_cache:
        return teacher_fwd, None, None
    t0 = time.perf_counter()
    rows = rows_of_rank(len(train_split))
    if use_cache == "memory" and rows is not None:  # a shard per rank, then every rank holds all of it
        mine = type(train_split)(train_split.x[rows], train_split.y[rows], train_split.transform)
        cached = gather_rows(teacher_outputs(teacher_fwd, mine, device, precision=train.precision), len(train_split))
    else:
        if spill_dir is not None and rank_and_world()[1] > 1:  # each rank its own files
            spill_dir = spill_dir / f"rank{rank_and_world()[0]}"
        cached = teacher_outputs(teacher_fwd, train_split, device, precision=train.precision,  # {name: (N, ...)}
                                 spill_dir=spill_dir if use_cache == "disk" else None)
    result.cache_seconds = time.perf_counter() - t0
    return teacher_fwd, cached, None


def _stored_views(teacher: nn.Module, loss: DistillLoss, train_split, streamed: bool, augmentation,
                  train: TrainSpec, device: torch.device, result: "FitResult", shapes: dict,
                  store: ViewStore) -> StoredViews | None:
    """The teachers' outputs on `train.teacher_views` seeded views (computed, or read where a student of the same
    teacher stored them); None, with the reason in result.teacher, where the teacher must run live."""
    if streamed:
        result.teacher = "live: the training split is streamed from disk (teacher_views needs it in memory)"
        return None
    if augmentation is None or not hasattr(augmentation, "draw"):
        result.teacher = "live: teacher_views replays the data set's own augmentation, and fit was given another"
        return None
    # each teacher on its own (its views are stored beside it): the direct one with the tapped nodes, the others'
    # logits as teacher_key(i)
    teachers = [(outputs_of(getattr(teacher, "direct", teacher), loss.nodes("teacher")), {})]
    teachers += [(outputs_of(m, []), {LOGITS: teacher_key(i)}) for i, m in enumerate(getattr(teacher, "extra", []))]
    folders = store.folders or [None] * len(teachers)
    k, n = train.teacher_views, len(train_split)
    where, result.teacher = views_plan(train.cache, k, n, shapes, train.cache_memory_mb, folders[0])
    if where is None:
        return None
    t0 = time.perf_counter()
    outputs, computed = {}, 0
    for (fwd, rename), folder in zip(teachers, folders):
        mine, read = teacher_views(fwd, train_split, augmentation, k, store.seed, device, train.precision, where,
                                   folder)
        outputs |= {rename.get(name, name): t for name, t in mine.items()}
        computed += not read
    result.cache_seconds = time.perf_counter() - t0
    how = (f"computed for {computed} of {len(teachers)} teachers, read for the others" if 0 < computed < len(teachers)
           else "computed" if computed else "read")
    result.teacher += f", {how} in {result.cache_seconds:.1f} s"
    return StoredViews(outputs, all_view_params(augmentation, n, store.seed, k, device), augmentation)


def _restore(state_path: Path | None, device, student, loss, opt, sched, gen, result: "FitResult") -> int:
    """Load the state of the last finished epoch into everything that trains; returns that epoch (0: none)."""
    try:
        state = load_train_state(state_path, device)
    except StateUnreadable:  # the caller has said so; the epochs it held are trained again
        Path(state_path).unlink(missing_ok=True)
        state = None
    if state is None:
        return 0
    try:
        restore_trained(student, state["student"])
    except (StateUnreadable, KeyError, TypeError):  # other frozen weights, or a state of an older kdchain
        Path(state_path).unlink(missing_ok=True)
        return 0
    except RuntimeError as e:  # saved for other shapes (e.g. by a kdchain whose pruning kept other channels)
        Path(state_path).unlink(missing_ok=True)
        why = str(e).strip().splitlines()[-1].strip()[:160]
        raise StateUnreadable(f"resume state {state_path} does not fit this student ({why}); it is removed: run the "
                              "same command again to train this generation from epoch 1") from None
    loss.load_state_dict(state["loss"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["schedule"])
    gen.set_state(state["batch_rng"].cpu())  # RNG states are CPU byte tensors whatever the map_location
    torch.set_rng_state(state["torch_rng"].cpu())
    result.resumed_from_epoch = state["epoch"]
    result.restored = [EpochReport(**r) for r in state.get("history", [])]
    return state["epoch"]


def _train_epoch(student_fwd, teacher_fwd, cached, loss: DistillLoss, train_split, augment, opt, sched,
                 gen: torch.Generator, train: TrainSpec, device: torch.device, epoch: int,
                 views: StoredViews | None = None) -> tuple[float, dict]:
    """One pass over the training split; (mean loss, mean of each term). Raises Diverged on a non-finite loss."""
    loss.set_epoch(epoch)  # FitNets: the first hint_epochs train on the hint alone
    loss_sum = torch.zeros((), device=device)
    part_sums = {name: torch.zeros((), device=device) for name in loss.names}
    # stored views: which of its K views each image trains on this epoch, (N,)
    view_of = None if views is None else torch.randint(views.k, (len(train_split),), generator=gen).to(device)
    for idx, x, y in epoch_batches(train_split, train.batch_size, gen, device):
        x, y, teacher_out = _teacher_batch(x, y, idx, teacher_fwd, cached, views, view_of, augment, train, device)
        with autocast(device, train.precision):
            student_out = student_fwd(x)
        student_out = {k: v.float() for k, v in student_out.items()}
        total, parts = loss(student_out, teacher_out, y)
        opt.zero_grad(set_to_none=True)
        total.backward()
        average_grads(loss.parameters())  # the student's gradients are averaged by DDP's backward
        opt.step()
        sched.step()
        loss_sum += total.detach() * len(y)
        for name, value in parts.items():
            part_sums[name] += value.detach() * len(y)

    # the one host synchronisation of the epoch (sums over the ranks: the whole epoch's means)
    n = max(1, len(train_split))
    sums = all_sum(torch.stack([loss_sum, *part_sums.values()]) / n).tolist()
    train_loss, parts_mean = sums[0], dict(zip(part_sums, sums[1:]))
    if not math.isfinite(train_loss):
        bad = [name for name, v in parts_mean.items() if not math.isfinite(v)] or ["total"]
        raise Diverged(f"loss became {train_loss} in epoch {epoch} (term: {', '.join(bad)}); "
                       f"lower train.lr or the weight of {bad[0]}")
    return train_loss, parts_mean


def _teacher_batch(x, y, idx, teacher_fwd, cached, views: StoredViews | None, view_of, augment, train: TrainSpec,
                   device) -> tuple[torch.Tensor, torch.Tensor, dict | None]:
    """(x as the student sees it, y, the teacher's outputs on that x or None): from stored views, the cache, or a
    live forward."""
    if views is not None:
        x, teacher_out = views.batch(x, idx, view_of[idx], device)  # image idx[j] as its view view_of[idx[j]]
        return x, y, teacher_out
    if augment is not None:
        x, y = augment(x, y)
    teacher_out = None
    if cached is not None:
        # same indices as the batch; a disk cache (float16, CPU) is read a batch at a time
        teacher_out = {k: v[idx.to(v.device)].to(device).float() for k, v in cached.items()}
    elif teacher_fwd is not None:
        with torch.inference_mode(), autocast(device, train.precision):
            teacher_out = teacher_fwd(x)  # live, on the very batch the student sees
        # inference tensors cannot be saved for backward: clone into normal tensors
        teacher_out = {k: v.float().clone() for k, v in teacher_out.items()}
    return x, y, teacher_out


def _student_forward(student: nn.Module, loss: DistillLoss, train: TrainSpec, device: torch.device, world: int):
    """x -> the student's outputs the loss reads: over the ranks when there are several, compiled when asked."""
    forward = outputs_of(student, loss.nodes("student"))
    if world > 1:
        forward = data_parallel(student, loss.nodes("student"), device)
    return torch.compile(forward) if train.compile else forward


def _save_state(path: Path, epoch: int, student: nn.Module, loss: DistillLoss, opt, sched, gen: torch.Generator,
                result: FitResult) -> None:
    """Everything a resume after `epoch` needs: weights, optimizer and schedule, both random states, the history."""
    atomic_save({"student": trained_state(student), "loss": loss.state_dict(), "optimizer": opt.state_dict(),
                 "schedule": sched.state_dict(), "batch_rng": gen.get_state(), "torch_rng": torch.get_rng_state(),
                 "epoch": epoch, "history": [_report_dict(r) for r in result.restored + result.history]}, path)


def fit(student: nn.Module, teacher: nn.Module | None, loss: DistillLoss, data: DataBundle, train: TrainSpec,
        seed: int = 0, on_epoch: Callable[[EpochReport], None] | None = None,
        device: torch.device | str = "cpu", state_path: Path | None = None,
        augment: Augment | None = None, view_store: ViewStore | None = None) -> FitResult:
    """Train `student` on `loss` (the teacher's outputs feed it when it needs them); returns the history.

    `augment(x, y)`, when given, is applied to every training batch; the teacher-output cache is then bypassed.
    With `train.teacher_views` and the data set's augmentation, the teacher's outputs on that many seeded views
    are computed before training (stored in, or read from, `view_store`'s folders) and no teacher forward runs
    during training."""
    device = torch.device(device)
    rank, world = rank_and_world()
    if world == 1:  # a rank's threads were set by the launcher, which divided the cores
        set_threads(train.threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)

    place(student, device).train()
    loss.to(device).train()
    student_fwd = _student_forward(student, loss, train, device, world)
    # a split streamed from disk (kdchain.data.sources.imagefolder.StreamSplit) stays where it is; in-memory ones move
    streamed = hasattr(data.train, "stream")
    train_split = data.train if streamed else data.train.to(device)
    loss.partial_labels = not streamed and bool((data.train.y < 0).any())  # unlabeled images (`data.unlabeled`)
    val_split = data.val if hasattr(data.val, "stream") else data.val.to(device)
    replayable = None  # the data set's own augmentation, which stored views can replay
    if augment is None and data.augment is not None:  # the data set's per-batch augmentation (kdchain.data.augment)
        replayable = data.augment
        augment = lambda x, y: (data.augment(x), y)  # noqa: E731
    result = FitResult()
    # a disk cache lives beside the resume state (the generation's own folder) and goes when fit returns
    spill_dir = Path(state_path).parent / "teacher_outputs" if state_path is not None else None
    try:
        teacher_fwd, cached, views = _teacher_side(teacher, loss, data, train_split, streamed, augment, train,
                                                   device, result, spill_dir, view_store or ViewStore(seed=seed),
                                                   replayable)
        steps_per_epoch = math.ceil(len(train_split) / train.batch_size)
        # frozen parameters (a pretrained backbone) are not optimizer state
        trainable = [p for p in list(student.parameters()) + list(loss.parameters()) if p.requires_grad]
        opt = make_optimizer(trainable, train, device)
        sched = make_schedule(opt, train, steps_per_epoch * train.epochs)
        start_epoch = _restore(state_path, device, student, loss, opt, sched, gen, result)

        for epoch in range(start_epoch + 1, train.epochs + 1):
            t0 = time.perf_counter()
            train_loss, parts_mean = _train_epoch(student_fwd, teacher_fwd, cached, loss, train_split, augment,
                                                  opt, sched, gen, train, device, epoch, views)
            report = EpochReport(epoch, train.epochs, train_loss, val_accuracy(student, val_split), parts_mean,
                                 time.perf_counter() - t0)
            result.history.append(report)
            result.train_seconds += report.seconds
            if state_path is not None and rank == 0:  # replaces the last epoch's
                _save_state(Path(state_path), epoch, student, loss, opt, sched, gen, result)
            if on_epoch is not None:
                on_epoch(report)
    finally:
        if spill_dir is not None:
            shutil.rmtree(spill_dir, ignore_errors=True)
    return result
