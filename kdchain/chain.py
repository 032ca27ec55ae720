"""One generation of a chain, as a library call: train it, measure it, checkpoint it.

Orchestration (flows/) calls `train_generation` once per generation and passes checkpoint paths between them;
kdchain.tracking records what it returns. Nothing here imports prefect or mlflow.
"""

import errno
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kdchain.checkpoints import load_checkpoint, load_compatible, save_checkpoint, teacher_source
from kdchain.data import batches, load_data
from kdchain.distill import EpochReport, Teachers, evaluate, fit, pick_device, predict_split
from kdchain.distill.losses import LOGITS, DistillLoss, teacher_key
from kdchain.measure.export import export_and_measure
from kdchain.measure.profile import profile
from kdchain.models import build_model, describe, prepare_for_training
from kdchain.models.taps import feature_shapes
from kdchain.resolve import ResolvedGeneration, resolve_chain, teacher_indices
from kdchain.spec import ChainSpec, FeatureLoss, FitnetLoss


class ResourceError(Exception):
    """Out of memory or out of disk: the message says what to change."""


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def is_out_of_memory(e: BaseException) -> bool:
    """torch's OOM on any device: torch.OutOfMemoryError, or a RuntimeError from the CPU allocator."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("not enough memory" in text or "DefaultCPUAllocator" in text
                                            or "out of memory" in text)


def resource_error(e: BaseException, gen_field: str) -> ResourceError | None:
    """A ResourceError that says what to change for an OOM or a failed write; None for anything else."""
    if is_out_of_memory(e):
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)[:200]
        return ResourceError(f"{gen_field} ran out of memory ({first}); lower {gen_field}.train.batch_size "
                             "or the model's channels, or train on a device with more memory")
    if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
        where = e.filename or "the workdir"
        return ResourceError(f"cannot write {where} ({e.strerror}); free space there or set `workdir:` "
                             "to a writable disk with room")
    return None


@dataclass
class GenerationOutcome:
    index: int
    name: str
    arch_summary: str
    checkpoint: str
    metrics: dict[str, float]  # test_accuracy, val_accuracy, params, flops, latency_ms, size_bytes, teacher_agreement
    history: list[EpochReport] = field(default_factory=list)
    resumed_from_epoch: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # fit, evaluate, profile, teacher_cache
    teacher_outputs: str = "none"  # how the teacher's outputs were obtained (engine's teacher-output cache)
    confusion: list[list[int]] = field(default_factory=list)  # (K, K) test counts: row = true, column = predicted
    class_names: list[str] = field(default_factory=list)


def build_loss(gen: ResolvedGeneration, student: nn.Module, teacher: nn.Module | None, input_shape) -> DistillLoss:
    shapes = {}
    direct = teacher.direct if isinstance(teacher, Teachers) else teacher
    for i, term in enumerate(gen.distill):
        if isinstance(term, (FeatureLoss, FitnetLoss)):  # trained adapters: 1x1 conv / FitNets regressor
            s = feature_shapes(student, [term.student_node], input_shape)[term.student_node]
            t = feature_shapes(direct, [term.teacher_node], input_shape)[term.teacher_node]
            shapes[i] = (s, t)
    # several teachers: the direct one's logits are "logits", the others' teacher_key(k), oldest first
    weights = None  # a single teacher (e.g. a search trial's proxy training) teaches alone
    if gen.index > 0 and gen.teachers == "ancestors" and isinstance(teacher, Teachers):
        extra = [i for i in teacher_indices(gen) if i != gen.index - 1]
        weights = {LOGITS: gen.teacher_weights[gen.index - 1]} | {
            teacher_key(k): gen.teacher_weights[i] for k, i in enumerate(extra)}
    return DistillLoss(gen.distill, shapes, weights)


def train_generation(spec: ChainSpec, index: int, teacher_checkpoint: Path | None, out_dir: Path,
                     on_epoch: Callable[[EpochReport], None] | None = None,
                     extra_teachers: list[Path] = ()) -> tuple[GenerationOutcome, nn.Module]:
    """Train generation `index` (0 = teacher) and write `out_dir/model.pt`; returns its outcome and model.
    `extra_teachers`: checkpoints of the other teachers (teachers: ancestors), oldest first.

    Running out of memory or disk raises ResourceError, naming the spec field to change."""
    try:
        return _train_generation(spec, index, teacher_checkpoint, out_dir, on_epoch, extra_teachers)
    except Exception as e:
        err = resource_error(e, "teacher" if index == 0 else f"generations.{index - 1}")
        if err is None:
            raise
        raise err from None


def _train_generation(spec: ChainSpec, index: int, teacher_checkpoint: Path | None, out_dir: Path,
                      on_epoch: Callable[[EpochReport], None] | None,
                      extra_teachers: list[Path] = ()) -> tuple[GenerationOutcome, nn.Module]:
    gen = resolve_chain(spec)[index]
    device = pick_device(spec.device)
    data = load_data(spec.data, spec.seed)
    input_shape = data.input_shape
    if index == 0 and spec.teacher.from_ is not None:
        return load_teacher_generation(spec, gen, Path(out_dir))
    torch.manual_seed(spec.seed + index)
    student = prepare_for_training(build_model(gen.arch, data.num_classes, input_shape[0]), gen.arch)

    teacher = None
    if index > 0:
        if teacher_checkpoint is None:
            raise ValueError(f"generation {gen.name} needs its teacher's checkpoint")
        teacher, _, _ = load_checkpoint(teacher_checkpoint)
        if len(extra_teachers) != len(teacher_indices(gen)) - 1:
            raise ValueError(f"generation {gen.name} has {len(teacher_indices(gen))} teachers; "
                             f"got {1 + len(extra_teachers)} checkpoints")
        if extra_teachers:
            teacher = Teachers(teacher, [load_checkpoint(p)[0] for p in extra_teachers])
    loss = build_loss(gen, student, teacher, input_shape)

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    result = fit(student, teacher, loss, data, gen.train, seed=spec.seed + index, on_epoch=on_epoch,
                 device=device, state_path=out_dir / "train_state.pt")
    t1 = time.perf_counter()
    student.eval()
    test = data.test.to(device)
    test_logits, test_y = predict_split(student, test)
    test_pred = test_logits.argmax(1)
    k = data.num_classes
    confusion = torch.bincount(test_y * k + test_pred, minlength=k * k).view(k, k).tolist()
    metrics = {"test_accuracy": (test_pred == test_y).float().mean().item(),
               "val_accuracy": evaluate(student, data.val.to(device))}
    if teacher is not None:
        teacher_pred = predict_split(getattr(teacher, "direct", teacher).to(device), test)[0].argmax(1)
        metrics["teacher_agreement"] = (test_pred == teacher_pred).float().mean().item()
    else:
        metrics["teacher_agreement"] = 1.0  # the teacher agrees with itself
    t2 = time.perf_counter()
    costs = profile(student, input_shape, spec.measure.runs, spec.measure.budget_s)
    metrics.update({k: float(v) for k, v in costs.as_dict().items()})
    t3 = time.perf_counter()
    checkpoint = out_dir / "model.pt"
    save_checkpoint(checkpoint, student, gen.arch, input_shape, data.num_classes)
    # ONNX beside the checkpoint, checked on the test batch (max |diff| of logits <= 1e-4), timed against torch
    # eager (whose batch-1 latency the profile has just measured)
    test_batch = next(batches(data.test, 256, shuffle=False))[0]
    metrics.update(export_and_measure(student, input_shape, checkpoint.with_suffix(".onnx"), test_batch,
                                      eager_latency_ms=costs.latency_ms, **spec.measure.model_dump()))
    t4 = time.perf_counter()
    (out_dir / "train_state.pt").unlink(missing_ok=True)  # finished: the resume state is no longer needed
    outcome = GenerationOutcome(index, gen.name, describe(gen.arch), str(checkpoint), metrics, result.history,
                                result.resumed_from_epoch,
                                {"fit": t1 - t0, "evaluate": t2 - t1, "profile": t3 - t2, "export": t4 - t3,
                                 "teacher_cache": result.cache_seconds})
    outcome.teacher_outputs = result.teacher  # "cached: ..." or "live: <why>"
    outcome.confusion, outcome.class_names = confusion, list(data.class_names)
    return outcome, student.cpu()


def score_checkpoint(spec: ChainSpec, path: Path) -> dict[str, float]:
    """test_accuracy on the data's current test split, plus params/flops/latency_ms/size_bytes: the numbers a
    promotion compares. Two models scored by this in the same process are scored on the same split."""
    model = load_compatible(spec, path)
    data = load_data(spec.data, spec.seed)
    with torch.inference_mode():
        accuracy = evaluate(model, data.test)
    return {"test_accuracy": accuracy,
            **{k: float(v) for k, v in profile(model, data.input_shape).as_dict().items()}}


def load_teacher_generation(spec: ChainSpec, gen: ResolvedGeneration, out_dir: Path) -> tuple[GenerationOutcome, nn.Module]:
    """Generation 0 from `teacher.from`: evaluated and profiled on the current data, checkpoint copied, not trained."""
    source = teacher_source(spec)
    t0 = time.perf_counter()
    model = load_compatible(spec, source)
    data = load_data(spec.data, spec.seed)
    metrics = {"test_accuracy": evaluate(model, data.test), "val_accuracy": evaluate(model, data.val),
               "teacher_agreement": 1.0}
    t1 = time.perf_counter()
    metrics.update({k: float(v) for k, v in profile(model, data.input_shape, spec.measure.runs,
                                                    spec.measure.budget_s).as_dict().items()})
    t2 = time.perf_counter()
    checkpoint = out_dir / "model.pt"
    save_checkpoint(checkpoint, model, gen.arch, data.input_shape, data.num_classes)
    outcome = GenerationOutcome(0, gen.name, describe(gen.arch) + f" (from {spec.teacher.from_})", str(checkpoint),
                                metrics, [], 0, {"fit": 0.0, "evaluate": t1 - t0, "profile": t2 - t1})
    return outcome, model
