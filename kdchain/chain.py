"""One generation of a chain, as a library call: resolve its spec, train it, measure it, checkpoint it.

Orchestration (flows/) calls `train_generation` once per generation and passes checkpoint paths between them;
tracking (kdchain.tracking) records what it returns. Nothing here imports prefect or mlflow.
"""

import errno
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from pydantic import TypeAdapter
from torch import nn

from kdchain.data import batches, data_fingerprint, input_info, load_data, missing_data
from kdchain.engine import EpochReport, Teachers, atomic_save, evaluate, fit, pick_device, predict, predict_split
from kdchain.export import export_and_measure
from kdchain.losses import LOGITS, DistillLoss, teacher_key
from kdchain.models import build_model, count_params, default_tap, describe, prepare_for_training, resolve_student
from kdchain.profile import count_flops, profile
from kdchain.specs import Arch, CeLoss, ChainSpec, FeatureLoss, FitnetLoss, SpecError, TrainSpec, canonical_json, spec_hash
from kdchain.taps import check_node, feature_shapes, tappable_nodes

ARCH = TypeAdapter(Arch)


@dataclass
class ResolvedGeneration:
    """A generation with everything implicit made explicit: the architecture, the loss nodes."""

    index: int  # 0 = teacher
    name: str
    arch: object  # an Arch spec
    distill: list  # loss specs, feature nodes filled in
    train: TrainSpec
    teachers: str = "direct"  # or "ancestors": every earlier generation teaches the logit terms
    teacher_weights: list[float] = field(default_factory=list)  # per earlier generation, oldest first

    def as_json(self) -> dict:
        out = {"index": self.index, "name": self.name, "arch": self.arch.model_dump(mode="json"),
               "distill": [t.model_dump(mode="json") for t in self.distill],
               "train": self.train.model_dump(mode="json")}
        if self.teachers != "direct":  # keeps the keys of direct-teacher chains as they were
            out["teachers"], out["teacher_weights"] = self.teachers, self.teacher_weights
        return out


def resolve_chain(spec: ChainSpec) -> list[ResolvedGeneration]:
    """Teacher first; each student derived from (or written next to) the architecture before it."""
    teacher_arch = spec.teacher.model if spec.teacher.from_ is None else read_arch(teacher_source(spec))
    gens = [ResolvedGeneration(0, "teacher", teacher_arch, [CeLoss(weight=1.0)], spec.teacher.train)]
    for i, g in enumerate(spec.generations, start=1):
        teacher_arch = gens[-1].arch
        arch = resolve_student(g.student, teacher_arch)
        distill = [
            t.model_copy(update={"teacher_node": t.teacher_node or default_tap(teacher_arch),
                                 "student_node": t.student_node or default_tap(arch)})
            if hasattr(t, "teacher_node") else t  # feature, fitnet, at, rkd read tapped nodes
            for t in g.distill
        ]
        gens.append(ResolvedGeneration(i, g.name, arch, distill, g.train, g.teachers,
                                       teacher_weights(g.teachers, g.teacher_weights, i)))
    return gens


def teacher_weights(teachers: str, weights: list[float] | None, index: int) -> list[float]:
    """Weight of each earlier generation 0..index-1 as a teacher of generation `index` (0 = not a teacher)."""
    if teachers == "direct":
        return [0.0] * (index - 1) + [1.0]
    return list(weights) if weights is not None else [1.0] * index


def teacher_indices(gen: "ResolvedGeneration") -> list[int]:
    """The generations that teach `gen`, oldest first; the last one is its direct teacher."""
    return [i for i, w in enumerate(gen.teacher_weights) if w > 0 or i == gen.index - 1]


def arch_field(gen: ResolvedGeneration, line: str) -> str:
    """'model.freeze: ...' from a builder -> 'teacher.model.freeze: ...' or 'generations.1.student.freeze: ...'."""
    field = "teacher.model" if gen.index == 0 else f"generations.{gen.index - 1}.student"
    return f"{field}.{line[len('model.'):]}" if line.startswith("model.") else f"{field}: {line}"


def check_chain(spec: ChainSpec, source: str = "config") -> list[ResolvedGeneration]:
    """Everything that needs the models built: feature node names. Raises SpecError naming each bad field."""
    try:
        gens = resolve_chain(spec)
    except SpecError as e:
        raise SpecError([f"{source}: {line}" for line in e.lines]) from None
    input_shape, num_classes = input_info(spec.data)
    # on the meta device: node names need no weights, and a huge model must not allocate them just to be checked
    models = []
    for g in gens:
        try:
            with torch.device("meta"):
                models.append(build_model(g.arch, num_classes, input_shape[0]))
        except SpecError as e:  # freeze prefixes, channel counts: name the generation's field
            raise SpecError([f"{source}: {arch_field(g, line)}" for line in e.lines]) from None
    problems = []
    for g in gens[1:]:
        where = f"{source}: generations.{g.index - 1}"
        if g.teachers == "direct" and spec.generations[g.index - 1].teacher_weights is not None:
            problems.append(f"{where}.teacher_weights: only used with `teachers: ancestors`; remove it or set that")
        elif len(g.teacher_weights) != g.index or not any(g.teacher_weights):
            problems.append(f"{where}.teacher_weights: give {g.index} weights, one per earlier generation "
                            f"({', '.join(x.name for x in gens[:g.index])}), not all zero")
        hint = max([t.hint_epochs for t in g.distill if isinstance(t, FitnetLoss)], default=0)
        if hint >= g.train.epochs:
            problems.append(f"{where}.distill: fitnet hint_epochs {hint} leaves no epoch of the full loss; "
                            f"make it less than train.epochs {g.train.epochs}")
        for j, term in enumerate(g.distill):
            if not hasattr(term, "teacher_node"):
                continue
            for side, model, owner in (("teacher", models[g.index - 1], gens[g.index - 1].name),
                                       ("student", models[g.index], g.name)):
                node = getattr(term, f"{side}_node")
                if not check_node(model, node):
                    some = ", ".join(tappable_nodes(model)[:6])
                    problems.append(f"{source}: generations.{g.index - 1}.distill.{j}.{side}_node: {node!r} is not "
                                    f"a node of {owner}'s model (e.g. {some}; `kdchain inspect --nodes` lists all)")
    from kdchain.search import budget_problems  # a budget no candidate meets stops here, before any training

    problems += [f"{source}: {line}" for line in budget_problems(spec, gens)]
    if problems:
        raise SpecError(problems)
    return gens


def missing_resources(spec: ChainSpec, source: str = "config") -> list[str]:
    """What must be on disk before training starts (pretrained weights, data files), each as how to provide it."""
    from kdchain.zoo import fitting_state, missing_weights

    problems = []
    _, num_classes = input_info(spec.data)
    for g in resolve_chain(spec):
        problem = missing_weights(g.arch)
        if problem is None and getattr(g.arch, "weights", None):  # on disk: do its tensors fit the model?
            try:
                fitting_state(build_model(g.arch, num_classes, 3), g.arch)
            except SpecError as e:
                problem = e.lines[0]
        if problem:
            problems.append(f"{source}: {arch_field(g, problem)}")
    problem = missing_data(spec.data)
    if problem:
        problems.append(f"{source}: {problem}")
    return problems


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def generation_key(spec: ChainSpec, gen: ResolvedGeneration, teacher_digest: str | None) -> str:
    """What a generation's result depends on: its resolved spec, the data as it is now (its fingerprint: an image
    folder that grew changes it), the seed, its teacher's weights (for a loaded teacher: the weights it loads)."""
    if gen.index == 0 and spec.teacher.from_ is not None:
        teacher_digest = file_digest(teacher_source(spec))
    return spec_hash({"generation": gen.as_json(), "data": spec.data.model_dump(mode="json"), "seed": spec.seed,
                      "teacher": teacher_digest, "data_fingerprint": data_fingerprint(spec.data)})


# ---------------------------------------------------------------------------------------------- teacher `from`


def is_model_uri(source: str) -> bool:
    return source.startswith(("models:/", "runs:/"))


def teacher_source(spec: ChainSpec, tracking_uri: str | None = None) -> Path | None:
    """The local checkpoint a `teacher: {from: ...}` names; MLflow URIs are fetched (once) under the workdir."""
    source = spec.teacher.from_
    if source is None:
        return None
    if is_model_uri(source):
        from kdchain import tracking  # the only mlflow importer

        uri = tracking.resolve_uri(tracking_uri, spec.tracking.uri)
        return tracking.fetch_checkpoint(source, uri, Path(spec.workdir) / "sources")
    path = Path(source).expanduser()
    if not path.is_file():
        raise SpecError([f"teacher.from: {source!r} is neither a models:/ or runs:/ URI nor an existing checkpoint "
                         "file; give e.g. models:/<name>@champion or the path of a generation's model.pt"])
    return path


def pin_teacher(spec: ChainSpec, tracking_uri: str | None = None) -> ChainSpec:
    """`models:/<name>@champion` -> `models:/<name>/<version>` (the alias may move while the chain runs), and the
    checkpoint fetched now from this store; later look-ups find the file."""
    source = spec.teacher.from_
    if source is None or not is_model_uri(source):
        return spec
    from kdchain import tracking

    uri = tracking.resolve_uri(tracking_uri, spec.tracking.uri)
    if source.startswith("models:/") and "@" in source:
        spec = spec.model_copy(update={"teacher": spec.teacher.model_copy(
            update={"from_": tracking.pin_model_uri(source, uri)})})
    teacher_source(spec, uri)
    return spec


def read_arch(path: Path):
    """The architecture stored in a kdchain checkpoint (so `derive` works from a loaded teacher)."""
    return load_checkpoint(path)[1]


# ---------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, model: nn.Module, arch, input_shape, num_classes: int) -> None:
    atomic_save({"arch": canonical_json(arch), "input_shape": list(input_shape), "num_classes": num_classes,
                 "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, path)


class CheckpointError(Exception):
    pass


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


def load_checkpoint(path: Path) -> tuple[nn.Module, object, dict]:
    """(model in eval mode, its Arch, the raw checkpoint); read with weights_only=True, never unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        arch = ARCH.validate_json(ckpt["arch"])
        model = build_model(arch, ckpt["num_classes"], ckpt["input_shape"][0])
        model.load_state_dict(ckpt["state_dict"])
    except Exception as e:  # truncated file, foreign pickle, missing keys, shape mismatch
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")[:200]
        raise CheckpointError(f"checkpoint {path} cannot be used ({type(e).__name__}: {first})") from None
    return model.eval(), arch, ckpt


# ---------------------------------------------------------------------------------------------- one generation


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
    costs = profile(student, input_shape)
    metrics.update({k: float(v) for k, v in costs.as_dict().items()})
    t3 = time.perf_counter()
    checkpoint = out_dir / "model.pt"
    save_checkpoint(checkpoint, student, gen.arch, input_shape, data.num_classes)
    # ONNX beside the checkpoint, checked on the test batch (max |diff| of logits <= 1e-4), timed against torch
    # eager (whose batch-1 latency the profile has just measured)
    test_batch = next(batches(data.test, 256, shuffle=False))[0]
    metrics.update(export_and_measure(student, input_shape, checkpoint.with_suffix(".onnx"), test_batch,
                                      eager_latency_ms=costs.latency_ms))
    t4 = time.perf_counter()
    (out_dir / "train_state.pt").unlink(missing_ok=True)  # finished: the resume state is no longer needed
    outcome = GenerationOutcome(index, gen.name, describe(gen.arch), str(checkpoint), metrics, result.history,
                                result.resumed_from_epoch,
                                {"fit": t1 - t0, "evaluate": t2 - t1, "profile": t3 - t2, "export": t4 - t3,
                                 "teacher_cache": result.cache_seconds})
    outcome.teacher_outputs = result.teacher  # "cached: ..." or "live: <why>"
    outcome.confusion, outcome.class_names = confusion, list(data.class_names)
    return outcome, student.cpu()


def load_compatible(spec: ChainSpec, path: Path) -> nn.Module:
    """A checkpoint's model, checked against the current data (input shape, number of classes)."""
    model, _, ckpt = load_checkpoint(path)
    input_shape, num_classes = input_info(spec.data)
    if tuple(ckpt["input_shape"]) != tuple(input_shape) or ckpt["num_classes"] != num_classes:
        raise CheckpointError(f"model {path} takes {tuple(ckpt['input_shape'])} inputs with {ckpt['num_classes']} "
                              f"classes; the data {spec.data.kind} has {tuple(input_shape)} and {num_classes}")
    return model


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
    metrics.update({k: float(v) for k, v in profile(model, data.input_shape).as_dict().items()})
    t2 = time.perf_counter()
    checkpoint = out_dir / "model.pt"
    save_checkpoint(checkpoint, model, gen.arch, data.input_shape, data.num_classes)
    outcome = GenerationOutcome(0, gen.name, describe(gen.arch) + f" (from {spec.teacher.from_})", str(checkpoint),
                                metrics, [], 0, {"fit": 0.0, "evaluate": t1 - t0, "profile": t2 - t1})
    return outcome, model


def inspect_chain(spec: ChainSpec, with_nodes: bool = False) -> list[dict]:
    """Per generation, without training: the architecture, params, FLOPs, the shapes of the tapped maps."""
    gens = resolve_chain(spec)
    input_shape, num_classes = input_info(spec.data)
    rows = []
    for g in gens:
        model = build_model(g.arch, num_classes, input_shape[0]).eval()
        # the default tap, and every node a feature loss reads from this model as student or as teacher
        taps = {default_tap(g.arch)} | {t.student_node for t in g.distill if hasattr(t, "student_node")}
        if g.index + 1 < len(gens):
            taps |= {t.teacher_node for t in gens[g.index + 1].distill if hasattr(t, "teacher_node")}
        row = {"index": g.index, "name": g.name, "summary": describe(g.arch), "arch": g.arch.model_dump(mode="json"),
               "params": count_params(model), "flops": count_flops(model, input_shape),
               "feature_maps": {n: list(s) for n, s in feature_shapes(model, sorted(taps), input_shape).items()},
               "distill": [t.model_dump(mode="json") for t in g.distill]}
        if with_nodes:
            row["nodes"] = tappable_nodes(model)
        rows.append(row)
    return rows


def chain_digest(spec: ChainSpec) -> str:
    return spec_hash(json.loads(canonical_json(spec)) | {"tracking": None})
