"""One generation of a chain, as a library call: train it, measure it, checkpoint it.

Orchestration (flows/) calls `train_generation` once per generation and passes checkpoint paths between them;
kdchain.tracking records what it returns. Nothing here imports prefect or mlflow.
"""

import errno
import itertools
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kdchain.checkpoints import load_checkpoint, load_compatible, save_checkpoint, teacher_source
from kdchain.data import batches, data_fingerprint, load_data
from kdchain.distill import (Diverged, EpochReport, RankFailed, Teachers, evaluate, fit, free_cores, pick_device,
                             predict_split)
from kdchain.distill.distributed import (EpochWriter, backend_for, launch, leave_group, rank_and_world, rank_process,
                                         record)
from kdchain.distill.losses import LOGITS, DistillLoss, teacher_key
from kdchain.measure.export import ExportMismatch, export_and_measure, export_onnx, label_onnx
from kdchain.measure.quantize import Int8Result, int8_generation
from kdchain.measure.profile import profile
from kdchain.models import build_model, describe, prepare_for_training
from kdchain.models.prune import prune_model
from kdchain.models.taps import feature_shapes
from kdchain.distill.views import VIEWS_VERSION, ViewStore
from kdchain.resolve import ResolvedGeneration, file_digest, resolve_chain, teacher_indices
from kdchain.workdir import FOLDER
from kdchain.spec import ChainSpec, DeploySpec, FeatureLoss, FitnetLoss, PrunedArch, spec_hash


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


def resource_error(e: BaseException, gen_field: str, train_bytes: int | None = None,
                   memory: int | None = None) -> ResourceError | None:
    """A ResourceError that says what to change for an OOM or a failed write; None for anything else.
    `train_bytes`: what the model's weights, gradients and optimizer state take; `memory`: what the device has."""
    if is_out_of_memory(e):
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)[:200]
        if train_bytes and memory and train_bytes > memory:  # no batch size helps
            return ResourceError(f"{gen_field} ran out of memory ({first}): its weights, gradients and optimizer "
                                 f"state alone take {train_bytes / 1e9:.1f} GB of {memory / 1e9:.1f} GB; lower the "
                                 "model's channels (or width), or train on a device with more memory")
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
    export_warning: str = ""  # the ONNX export did not match torch (kdchain.measure.export): left out, said why
    skipped: list[str] = field(default_factory=list)  # files the data source could not read, "path (reason)"
    tags: dict[str, str] = field(default_factory=dict)  # MLflow run tags: int8 operators left in float, a drop flag


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


def view_store(spec: ChainSpec, gen: ResolvedGeneration, teacher_checkpoints: list[Path],
               loss: DistillLoss) -> ViewStore | None:
    """Where each teacher's stored views for `gen` live (`train.teacher_views`; None when off): beside that
    teacher's checkpoint in its generation folder, so that every student it teaches finds them and `kdchain clean`
    removes them with it (a teacher loaded from elsewhere: the chain's workdir folder). Direct teacher first.
    Each key is what that teacher's outputs depend on: its weights, the data, the views' seed (the chain's, so
    that students at different links share them), K, the nodes read from it, the precision."""
    if not gen.train.teacher_views or not loss.needs_teacher:
        return None
    folders = []
    for i, checkpoint in enumerate(teacher_checkpoints):
        key = spec_hash({"teacher": file_digest(Path(checkpoint)), "data": data_fingerprint(spec.data),
                         "seed": spec.seed, "views": gen.train.teacher_views,
                         "nodes": loss.nodes("teacher") if i == 0 else [],  # the others teach logits only
                         "precision": gen.train.precision, "version": VIEWS_VERSION})
        home = Path(checkpoint).resolve().parent
        home = home if FOLDER.match(home.name) else Path(spec.workdir).resolve() / spec.name
        folders.append(home / f"views-{key[:12]}")
    return ViewStore(folders, spec.seed)


def train_generation(spec: ChainSpec, index: int, teacher_checkpoint: Path | None, out_dir: Path,
                     on_epoch: Callable[[EpochReport], None] | None = None,
                     extra_teachers: list[Path] = ()) -> tuple[GenerationOutcome, nn.Module]:
    """Train generation `index` (0 = teacher) and write `out_dir/model.pt`; returns its outcome and model.
    `extra_teachers`: checkpoints of the other teachers (teachers: ancestors), oldest first.

    Running out of memory or disk raises ResourceError, naming the spec field to change. With
    `train.distributed.nproc` > 1 (or nnodes > 1) the training runs data-parallel in that many processes."""
    try:
        distributed = resolve_chain(spec)[index].train.distributed
        if distributed.nproc * distributed.nnodes > 1 and not (index == 0 and spec.teacher.from_ is not None):
            return _train_distributed(spec, index, teacher_checkpoint, Path(out_dir), on_epoch, extra_teachers)
        return _train_generation(spec, index, teacher_checkpoint, out_dir, on_epoch, extra_teachers)
    except Exception as e:
        err = resource_error(e, "teacher" if index == 0 else f"generations.{index - 1}", *_training_bytes(spec, index))
        if err is None:
            raise
        raise err from None


def _train_distributed(spec: ChainSpec, index: int, teacher_checkpoint: Path | None, out_dir: Path,
                       on_epoch: Callable[[EpochReport], None] | None,
                       extra_teachers: list[Path]) -> tuple[GenerationOutcome, nn.Module]:
    """train_generation over torch.distributed ranks (kdchain.distill.distributed); this process only launches
    them and hands rank 0's epoch reports to `on_epoch`. Rank 0 writes the checkpoint, read back here."""
    from kdchain.preflight import device_kind

    gen = resolve_chain(spec)[index]
    kind, dspec = device_kind(spec.device), gen.train.distributed
    threads = gen.train.threads or max(1, free_cores() // dspec.nproc)  # ranks on one CPU share its free cores
    args = (spec, index, teacher_checkpoint, out_dir, list(extra_teachers), kind, backend_for(dspec, kind),
            os.getpid(), threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        outcome = launch(dspec, _rank_main, args, out_dir / "epochs.jsonl", on_epoch, EpochReport,
                         f"{spec.name}-{gen.name}", out_dir / "ranks")
    except RankFailed as e:  # a rank's own known error keeps its type (the CLI words those)
        known = {"Diverged": Diverged, "ResourceError": ResourceError}.get(e.kind)
        raise (known(e.detail) if known else RankFailed(f"{'teacher' if index == 0 else 'generation ' + gen.name}: "
                                                        f"{e}")) from None
    model = load_checkpoint(Path(outcome.checkpoint))[0]
    model.class_names = outcome.class_names
    return outcome, model


@record  # a failure's message reaches the launcher (torch elastic's error file)
def _rank_main(spec: ChainSpec, index: int, teacher_checkpoint: Path | None, out_dir: Path,
               extra_teachers: list[Path], device_type: str, backend: str, launcher_pid: int,
               threads: int) -> GenerationOutcome | None:
    """One rank of a distributed generation (spawned by torch's elastic agent); rank 0 returns the outcome."""
    with rank_process(device_type, backend, launcher_pid, threads) as device:
        writer = EpochWriter(out_dir / "epochs.jsonl") if rank_and_world()[0] == 0 else None
        try:
            return _train_generation(spec, index, teacher_checkpoint, out_dir, writer, extra_teachers, device)[0]
        except Exception as e:
            where = "teacher" if index == 0 else f"generations.{index - 1}"
            err = resource_error(e, where, *_training_bytes(spec, index))
            if err is None:
                raise
            raise err from None


def _training_bytes(spec: ChainSpec, index: int) -> tuple[int | None, int | None]:
    """(bytes the model's training state takes, bytes of memory the device has), for an OOM's hint."""
    from kdchain.data import input_info
    from kdchain.preflight import TRAIN_BYTES_PER_PARAM, device_kind, memory_bytes

    try:
        (channels, _, _), num_classes = input_info(spec.data)
        with torch.device("meta"):
            model = build_model(resolve_chain(spec)[index].arch, num_classes, channels)
        params = sum(p.numel() for p in model.parameters())
        return params * TRAIN_BYTES_PER_PARAM, memory_bytes(device_kind(spec.device))
    except Exception:  # noqa: BLE001 -- the hint then stays the general one
        return None, None


def _test_metrics(student: nn.Module, teacher, data, device) -> tuple[dict, list[list[int]]]:
    """Test and validation accuracy, agreement with the (direct) teacher on the test split, and the confusion."""
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
    return metrics, confusion


def _train_generation(spec: ChainSpec, index: int, teacher_checkpoint: Path | None, out_dir: Path,
                      on_epoch: Callable[[EpochReport], None] | None,
                      extra_teachers: list[Path] = (), device: torch.device | None = None,
                      ) -> tuple[GenerationOutcome, nn.Module]:
    gen = resolve_chain(spec)[index]
    device = device or pick_device(spec.device)
    data = load_data(spec.data, spec.seed)
    input_shape = data.input_shape
    if index == 0 and spec.teacher.from_ is not None:
        return load_teacher_generation(spec, gen)
    torch.manual_seed(spec.seed + index)
    pruned = isinstance(gen.arch, PrunedArch)  # then the student is its teacher, pruned, not a fresh model
    student = None if pruned else prepare_for_training(build_model(gen.arch, data.num_classes, input_shape[0]),
                                                       gen.arch)
    arch = gen.arch

    teacher = None
    if index > 0:
        if teacher_checkpoint is None:
            raise ValueError(f"generation {gen.name} needs its teacher's checkpoint")
        teacher, teacher_arch, _ = load_checkpoint(teacher_checkpoint)
        if pruned:
            student, arch = prune_model(teacher, teacher_arch, gen.arch.prune, training_sample(data, spec.seed + index),
                                        gen.arch.keep, data.num_classes, input_shape[0])
        if len(extra_teachers) != len(teacher_indices(gen)) - 1:
            raise ValueError(f"generation {gen.name} has {len(teacher_indices(gen))} teachers; "
                             f"got {1 + len(extra_teachers)} checkpoints")
        if extra_teachers:
            teacher = Teachers(teacher, [load_checkpoint(p)[0] for p in extra_teachers])
    loss = build_loss(gen, student, teacher, input_shape)

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    views = view_store(spec, gen, [teacher_checkpoint, *extra_teachers], loss) if index > 0 else None
    result = fit(student, teacher, loss, data, gen.train, seed=spec.seed + index, on_epoch=on_epoch,
                 device=device, state_path=out_dir / "train_state.pt", view_store=views)
    t1 = time.perf_counter()
    if leave_group() != 0:  # one rank of several: rank 0 alone measures and writes the generation
        return None, None
    metrics, confusion = _test_metrics(student, teacher, data, device)
    t2 = time.perf_counter()
    costs = profile(student, input_shape, spec.measure.runs, spec.measure.budget_s)
    metrics.update({k: float(v) for k, v in costs.as_dict().items()})
    t3 = time.perf_counter()
    checkpoint = out_dir / "model.pt"
    student.class_names = list(data.class_names)  # travels with the model: checkpoint, MLflow model, ONNX
    save_checkpoint(checkpoint, student, arch, input_shape, data.num_classes, data.class_names)
    onnx_path = checkpoint.with_suffix(".onnx")
    export_warning = export_checked(student, input_shape, onnx_path, next(batches(data.test, 256, shuffle=False))[0],
                                    costs.latency_ms, metrics, spec.measure.model_dump(exclude={"keep_onnx"}))
    int8 = None if export_warning or not onnx_path.is_file() else quantize_generation(
        spec, gen, data, onnx_path, metrics["test_accuracy"])
    if not spec.measure.keep_onnx:  # measured (and quantized from); the weights are stored twice, not four times
        onnx_path.unlink(missing_ok=True)
    t4 = time.perf_counter()
    # the resume state stays: the caller removes it once the generation is recorded (a kill before that then
    # resumes after the last epoch, 0 epochs trained)
    outcome = GenerationOutcome(index, gen.name, describe(arch), str(checkpoint), metrics, result.history,
                                result.resumed_from_epoch,
                                {"fit": t1 - t0, "evaluate": t2 - t1, "profile": t3 - t2, "export": t4 - t3,
                                 "teacher_cache": result.cache_seconds})
    outcome.teacher_outputs = result.teacher  # "cached: ..." or "live: <why>"
    outcome.confusion, outcome.class_names = confusion, list(data.class_names)
    outcome.export_warning = export_warning
    outcome.skipped = list(data.skipped)
    outcome.metrics["skipped_files"] = float(len(data.skipped))  # unreadable files the data source left out
    if int8 is not None:
        metrics.update(int8.metrics)
        outcome.tags = int8_tags(int8, gen.deploy.max_drop)
    if result.teacher != "none":  # cached, stored views or live, and why: in the run's tags
        outcome.tags["kdchain.teacher_outputs"] = result.teacher[:5000]
    return outcome, student.cpu()


def export_checked(model: nn.Module, input_shape, path: Path, check_x: torch.Tensor, eager_latency_ms: float,
                   metrics: dict[str, float], measure: dict | None = None) -> str:
    """ONNX beside the checkpoint, checked against torch on the test batch `check_x` and timed against torch eager
    (whose batch-1 latency the profile has just measured); adds its metrics to `metrics`. On a real mismatch the
    ONNX file is removed (nobody should deploy it), its difference still recorded, and the warning returned: the
    trained generation itself stays good. Returns "" when the export checks out."""
    try:
        metrics.update(export_and_measure(model, input_shape, path, check_x, eager_latency_ms=eager_latency_ms,
                                          **(measure or {})))  # `measure:` of the chain: onnx and speed on or off, budget
        if getattr(model, "class_names", None) and Path(path).is_file():
            label_onnx(path, model.class_names)
        return ""
    except ExportMismatch as e:
        Path(path).unlink(missing_ok=True)
        metrics["onnx_max_abs_diff"] = e.diff
        return f"{e}; the ONNX file is left out"


def quantize_generation(spec: ChainSpec, gen: ResolvedGeneration, data, onnx_path: Path,
                        fp32_accuracy: float) -> Int8Result | None:
    """The int8 ONNX beside the fp32 one (`deploy.quantize`), scored on the test split and timed; None without."""
    deploy = gen.deploy
    if not deploy.quantized:
        return None
    calibration = None
    if deploy.quantize == "static":  # a seeded sample of the training split, normalised as the model sees it
        sample = torch.Generator().manual_seed(spec.seed)
        calibration = next(batches(data.train, deploy.calibration_images, sample))[0].cpu().numpy()
    test = ((x.cpu().numpy(), y.cpu().numpy()) for x, y in batches(data.test, 256, shuffle=False))
    return int8_generation(onnx_path, deploy, calibration, test, data.input_shape, fp32_accuracy)


def int8_tags(int8: Int8Result, max_drop: float) -> dict[str, str]:
    tags = {"kdchain.int8.float_ops": int8.float_ops_text()}
    if int8.flagged:
        tags["kdchain.int8.flag"] = (f"int8 test accuracy {int8.metrics['accuracy_drop_int8']:.2f} points below "
                                     f"fp32 (max_drop {max_drop:g})")
    return tags


def training_sample(data, seed: int, batch_size: int = 64):
    """n -> n seeded batches of the training split (cycled), on the CPU: what pruning scores channels and blocks on."""
    gen = torch.Generator().manual_seed(seed)

    def sample(n: int) -> list:
        out = []
        while len(out) < n:
            out += list(itertools.islice(batches(data.train, batch_size, gen), n - len(out)))
        return [(x.cpu(), y.cpu()) for x, y in out]
    return sample


def score_checkpoint(spec: ChainSpec, path: Path) -> dict[str, float]:
    """test_accuracy on the data's current test split, plus params/flops/latency_ms/size_bytes: the numbers a
    promotion compares; and the int8 model's when the promotion rule reads them. Two models scored by this in the
    same process are scored on the same split."""
    model = load_compatible(spec, path)
    data = load_data(spec.data, spec.seed)
    with torch.inference_mode():
        accuracy = evaluate(model, data.test)
    scores = {"test_accuracy": accuracy,
              **{k: float(v) for k, v in profile(model, data.input_shape).as_dict().items()}}
    if spec.promotion.needs_int8:
        scores.update(int8_scores(spec, model, data, accuracy))
    return scores


def int8_scores(spec: ChainSpec, model: nn.Module, data, fp32_accuracy: float) -> dict[str, float]:
    """The int8 ONNX model a chain ships from `model`, quantized as its last generation's `deploy` says (static
    when that says none), scored on the test split and timed."""
    gen = resolve_chain(spec)[-1]
    if not gen.deploy.quantized:
        gen = replace(gen, deploy=DeploySpec(quantize="static"))
    with tempfile.TemporaryDirectory() as tmp:
        onnx = export_onnx(model, data.input_shape, Path(tmp) / "model.onnx")
        if getattr(model, "class_names", None):  # the same file the chain ships: its outputs named
            label_onnx(onnx, model.class_names)
        result = quantize_generation(spec, gen, data, onnx, fp32_accuracy)
    return {k: result.metrics[k] for k in ("test_accuracy_int8", "latency_ms_int8", "throughput_ips_int8",
                                           "size_bytes_int8")}


def load_teacher_generation(spec: ChainSpec, gen: ResolvedGeneration) -> tuple[GenerationOutcome, nn.Module]:
    """Generation 0 from `teacher.from`: evaluated and profiled on the current data, not trained; its checkpoint is
    the source file itself (a `models:/` or `runs:/` source: the copy fetched once under the workdir), not copied."""
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
    model.class_names = list(data.class_names)
    outcome = GenerationOutcome(0, gen.name, describe(gen.arch) + f" (from {spec.teacher.from_})", str(source),
                                metrics, [], 0, {"fit": 0.0, "evaluate": t1 - t0, "profile": t2 - t1},
                                class_names=list(data.class_names))
    return outcome, model
