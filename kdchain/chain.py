"""One generation of a chain, as a library call: train it, then measure it (kdchain.scoring) and ship it
(kdchain.shipping: ONNX, int8), and checkpoint it.

Orchestration (flows/) calls `train_generation` once per generation and passes checkpoint paths between them;
kdchain.tracking records what it returns. What trains (the student, its loss, its teacher's stored views) is
kdchain.students. Nothing here imports prefect or mlflow.
"""

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kdchain.checkpoints import load_checkpoint, load_compatible, save_checkpoint, teacher_source
from kdchain.data import batches, labeled_only, load_data
from kdchain.distill import Diverged, EpochReport, RankFailed, Teachers, evaluate, fit, free_cores, pick_device
from kdchain.distill.distributed import (EpochWriter, backend_for, launch, leave_group, rank_and_world, rank_process,
                                         record)
from kdchain.measure.profile import profile
from kdchain.models import build_model, describe, prepare_for_training
from kdchain.resolve import ResolvedGeneration, resolve_chain, teacher_indices
from kdchain.resources import ResourceError, resource_error
from kdchain.scoring import test_metrics
from kdchain.shipping import export_checked, int8_tags, ship_int8
from kdchain.spec import ChainSpec, PrunedArch
from kdchain.sizing import target_met
from kdchain.students import build_loss, pruned_student, sized_student_arch, view_store


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
    candidates: list[dict] = field(default_factory=list)  # a target-sized student's plans (kdchain.sizing), probed


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
    if isinstance(gen.arch, PrunedArch) and gen.arch.prune.target is not None and gen.arch.record is None:
        # sized here, once: every rank then reads the chosen plan from out_dir/sizing.json
        teacher, teacher_arch, _ = load_checkpoint(teacher_checkpoint)
        sized_student_arch(spec, gen, load_data(spec.data, spec.seed), teacher, teacher_arch, out_dir, "cpu")
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


def _train_generation(spec: ChainSpec, index: int, teacher_checkpoint: Path | None, out_dir: Path,
                      on_epoch: Callable[[EpochReport], None] | None,
                      extra_teachers: list[Path] = (), device: torch.device | None = None,
                      ) -> tuple[GenerationOutcome, nn.Module]:
    gen = resolve_chain(spec)[index]
    device = device or pick_device(spec.device)
    data = load_data(spec.data, spec.seed)
    if index == 0 and spec.teacher.from_ is not None:
        return load_teacher_generation(spec, gen)
    if index == 0:  # the teacher learns from labels: unlabeled images (`data.unlabeled`) teach its students only
        data = labeled_only(data)
    torch.manual_seed(spec.seed + index)
    out_dir = Path(out_dir)
    student, arch, teacher, candidates = _student_and_teacher(spec, gen, data, teacher_checkpoint, extra_teachers,
                                                              out_dir, device)
    loss = build_loss(gen, student, teacher, data.input_shape)
    t0 = time.perf_counter()
    views = view_store(spec, gen, [teacher_checkpoint, *extra_teachers], loss) if index > 0 else None
    result = fit(student, teacher, loss, data, gen.train, seed=spec.seed + index, on_epoch=on_epoch,
                 device=device, state_path=out_dir / "train_state.pt", view_store=views)
    seconds = {"fit": time.perf_counter() - t0, "teacher_cache": result.cache_seconds}
    if leave_group() != 0:  # one rank of several: rank 0 alone measures and writes the generation
        return None, None
    # the resume state stays: the caller removes it once the generation is recorded (a kill before that then
    # resumes after the last epoch, 0 epochs trained)
    outcome = _measure_and_ship(spec, gen, student, arch, teacher, data, device, out_dir, seconds)
    outcome.history, outcome.resumed_from_epoch = result.history, result.resumed_from_epoch
    if candidates:  # the trained student measured as its candidates were (one code path: kdchain.sizing)
        outcome.candidates = candidates
        outcome.metrics.update(target_met(student.cpu(), data.input_shape, arch, gen.deploy))
    outcome.teacher_outputs = result.teacher  # "cached: ..." or "live: <why>"
    if result.teacher != "none":  # cached, stored views or live, and why: in the run's tags
        outcome.tags["kdchain.teacher_outputs"] = result.teacher[:5000]
    return outcome, student.cpu()


def _student_and_teacher(spec: ChainSpec, gen: ResolvedGeneration, data, teacher_checkpoint: Path | None,
                         extra_teachers: list[Path], out_dir: Path, device=None,
                         ) -> tuple[nn.Module, object, nn.Module | None, list[dict]]:
    """(the student to train, its architecture, its teacher or Teachers (None for the teacher itself), the
    candidates a target-sized student was chosen from). A pruned student is its teacher pruned
    (kdchain.students.pruned_student), not a fresh model; one sized by a target is the plan kdchain.sizing chose."""
    pruned = isinstance(gen.arch, PrunedArch) and gen.warm_start is None  # a warm start is pruned already
    student = None if pruned else _initial_student(spec, gen, data)
    if gen.index == 0:
        return student, gen.arch, None, []
    if teacher_checkpoint is None:
        raise ValueError(f"generation {gen.name} needs its teacher's checkpoint")
    teacher, teacher_arch, _ = load_checkpoint(teacher_checkpoint)
    arch, candidates = gen.arch, []
    if pruned and gen.arch.prune.target is not None and gen.arch.record is None:
        arch, candidates = sized_student_arch(spec, gen, data, teacher, teacher_arch, out_dir, device or "cpu")
    if pruned:
        student, arch = pruned_student(teacher, teacher_arch, arch, data, spec.seed + gen.index)
    if len(extra_teachers) != len(teacher_indices(gen)) - 1:
        raise ValueError(f"generation {gen.name} has {len(teacher_indices(gen))} teachers; "
                         f"got {1 + len(extra_teachers)} checkpoints")
    if extra_teachers:
        teacher = Teachers(teacher, [load_checkpoint(p)[0] for p in extra_teachers])
    return student, arch, teacher, candidates


def _initial_student(spec: ChainSpec, gen: ResolvedGeneration, data) -> nn.Module:
    """A written-out student built (pretrained weights where its spec names them), or the model its `warm_start`
    holds; a warm teacher is shrunk and perturbed as `retrain` says (Ash & Adams, NeurIPS 2020)."""
    if gen.warm_start is None:
        return prepare_for_training(build_model(gen.arch, data.num_classes, data.input_shape[0]), gen.arch)
    model = load_checkpoint(gen.warm_start)[0]
    shrink, perturb = spec.retrain.shrink, spec.retrain.perturb
    if gen.index == 0 and (shrink < 1.0 or perturb > 0.0):
        fresh = build_model(gen.arch, data.num_classes, data.input_shape[0])  # the seeded initialisation
        with torch.no_grad():
            for p, q in zip(model.parameters(), fresh.parameters()):
                p.mul_(shrink).add_(q, alpha=perturb)
    return model


def _measure_and_ship(spec: ChainSpec, gen: ResolvedGeneration, student: nn.Module, arch, teacher, data, device,
                      out_dir: Path, seconds: dict[str, float]) -> GenerationOutcome:
    """The trained student's test figures and profile, its checkpoint, its ONNX file checked against torch and its
    int8 model; `seconds` gains each step's time."""
    t0 = time.perf_counter()
    metrics, confusion = test_metrics(student, teacher, data, device)
    t1 = time.perf_counter()
    costs = profile(student, data.input_shape, spec.measure.runs, spec.measure.budget_s)
    metrics.update({k: float(v) for k, v in costs.as_dict().items()})
    t2 = time.perf_counter()
    checkpoint = out_dir / "model.pt"
    student.class_names = list(data.class_names)  # travels with the model: checkpoint, MLflow model, ONNX
    save_checkpoint(checkpoint, student, arch, data.input_shape, data.num_classes, data.class_names)
    onnx_path = checkpoint.with_suffix(".onnx")
    export_warning = export_checked(student, data.input_shape, onnx_path,
                                    next(batches(data.test, 256, shuffle=False))[0], costs.latency_ms, metrics,
                                    spec.measure.model_dump(exclude={"keep_onnx"}))
    int8 = None if export_warning or not onnx_path.is_file() else ship_int8(
        spec, gen, student, teacher, data, onnx_path, metrics["test_accuracy"])
    if not spec.measure.keep_onnx:  # measured (and quantized from); the weights are stored twice, not four times
        onnx_path.unlink(missing_ok=True)
    qat = int8.metrics.get("qat_seconds", 0.0) if int8 is not None else 0.0  # fine-tuning, not export
    seconds.update({"evaluate": t1 - t0, "profile": t2 - t1, "export": time.perf_counter() - t2 - qat}
                   | ({"qat": qat} if qat else {}))
    outcome = GenerationOutcome(gen.index, gen.name, describe(arch), str(checkpoint), metrics, seconds=seconds,
                                confusion=confusion, class_names=list(data.class_names),
                                export_warning=export_warning, skipped=list(data.skipped))
    outcome.metrics["skipped_files"] = float(len(data.skipped))  # unreadable files the data source left out
    if int8 is not None:
        metrics.update(int8.metrics)
        outcome.tags = int8_tags(int8, gen.deploy.max_drop)
    return outcome


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
