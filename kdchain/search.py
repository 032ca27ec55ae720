"""Searching a generation's student: candidates, budget checks, proxy trials, the winner.

A generation with `search:` proxy-trains some of the candidates of its space (width x depth x temperature x
kd weight) for `proxy_epochs` and keeps one; the chain then trains that one fully as the generation's student.
Optuna proposes the trials (ask/tell in the orchestrator, flows/search.py) and prunes hopeless ones through the
intermediate values each trial reports to a journal file every worker reaches. Nothing here imports prefect or
mlflow: trials take and return paths and small values.
"""

import importlib.util
import itertools
import os
import socket
import time
from pathlib import Path

import optuna
import torch

from kdchain.checkpoints import ARCH, load_checkpoint
from kdchain.data import input_info, load_data
from kdchain.distill import fit, pick_device
from kdchain.measure.profile import count_flops, latency_ms
from kdchain.models import build_model, default_tap, derive_arch, describe, resolve_student
from kdchain.resolve import resolve_chain, tapped_nodes
from kdchain.search_results import (Candidate, SearchResult, TrialResult, knee_floor, pareto_front,  # noqa: F401
                                    pareto_plot, select_winner)
from kdchain.spec import (ChainSpec, Derive, DeriveStudent, PruneStudent, SearchSpec, SpecError, canonical_json,
                          spec_hash)
from kdchain.students import build_loss, pruned_student, view_store

AXES = ("width", "depth", "temperature", "kd_weight")


def field_of(index: int) -> str:
    return f"generations.{index - 1}.search"


# ---------------------------------------------------------------------------------------------- candidates


def _grid(search: SearchSpec) -> list[dict[str, float]]:
    axes = {k: v for k, v in search.space.model_dump().items() if v is not None}
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def candidate_arch(spec: ChainSpec, index: int, teacher_arch, params: dict[str, float]):
    """The student of generation `index` at this point of the space: the teacher's architecture scaled (or the
    written-out student scaled, when the generation names one)."""
    student = spec.generations[index - 1].student
    if isinstance(student, PruneStudent):  # the teacher pruned to this width/depth, keeping its weights
        if params["width"] > 1 or params.get("depth", 1.0) > 1:
            raise SpecError([f"{field_of(index)}.space: a student pruned from its teacher keeps at most all of it; "
                             "give widths and depths up to 1.0"])
        prune = student.prune.model_copy(update={"width": params["width"], "depth": params.get("depth", 1.0)})
        return resolve_student(PruneStudent(prune=prune), teacher_arch,
                               tapped_nodes(spec, index, default_tap(teacher_arch)))
    to = student.derive.to if isinstance(student, DeriveStudent) else "same"
    base = teacher_arch if isinstance(student, DeriveStudent) else student
    return derive_arch(base, Derive(width=params["width"], depth=params.get("depth", 1.0), to=to))


def candidate_distill(distill: list, params: dict[str, float]) -> list:
    """The generation's loss terms with the searched kd temperature / kd weight (ce gets 1 - kd weight)."""
    out = []
    for term in distill:
        if term.kind == "kd":
            upd = {}
            if "temperature" in params:
                upd["temperature"] = params["temperature"]
            if "kd_weight" in params:
                upd["weight"] = params["kd_weight"]
            term = term.model_copy(update=upd)
        elif term.kind == "ce" and "kd_weight" in params:
            term = term.model_copy(update={"weight": 1.0 - params["kd_weight"]})
        out.append(term)
    return out


def candidates(spec: ChainSpec, index: int, teacher_arch, teacher_checkpoint: Path | None = None) -> list[Candidate]:
    """Every point of generation `index`'s space with its cost and the budget limits it breaks; no training.
    With the trained teacher's checkpoint, a pruned candidate is planned from its weights (which blocks a depth
    prune removes depends on them): the architecture measured here is the one its trial and the winner train.
    Without it (the pre-flight, before the teacher has trained) from the teacher's initial weights."""
    search = spec.generations[index - 1].search
    budget = search.budget
    input_shape, num_classes = input_info(spec.data)
    plan = _planner(spec, index, teacher_checkpoint)
    out, seen, built = [], {}, set()
    for params in _grid(search):
        arch = plan(candidate_arch(spec, index, teacher_arch, params))
        key = canonical_json(arch)
        same = canonical_json({"arch": key, **{k: v for k, v in params.items() if k not in ("width", "depth")}})
        if same in built:  # another width/depth rounds to this very network with the same loss: train it once
            continue
        built.add(same)
        if key not in seen:  # temperature/kd weight do not change the model: measure it once
            model = build_model(arch, num_classes, input_shape[0]).eval()
            n = sum(p.numel() for p in model.parameters())
            cost = {"params": float(n), "flops": float(count_flops(model, input_shape))}
            cost["latency_ms"] = latency_ms(model, input_shape, runs=15, warmup=3)
            seen[key] = cost
        cost = seen[key]
        over = []
        if budget.max_params is not None and cost["params"] > budget.max_params:
            over.append(f"params {cost['params']:,.0f} > {budget.max_params:,}")
        if budget.max_flops is not None and cost["flops"] > budget.max_flops:
            over.append(f"flops {cost['flops']:,.0f} > {budget.max_flops:,}")
        if budget.max_latency_ms is not None and cost["latency_ms"] > budget.max_latency_ms:
            over.append(f"latency {cost['latency_ms']:.3f} ms > {budget.max_latency_ms} ms")
        out.append(Candidate(params=params, arch=arch.model_dump(mode="json"), summary=describe(arch), cost=cost,
                             over_budget=over))
    return out


def _planner(spec: ChainSpec, index: int, teacher_checkpoint: Path | None):
    """arch -> arch: a pruned plan made concrete from the trained teacher's weights (record filled in), on the
    seeded batches its training uses; other architectures (and everything without a checkpoint) unchanged."""
    loaded = {}

    def plan(arch):
        if arch.kind != "pruned" or teacher_checkpoint is None:
            return arch
        if not loaded:
            loaded["teacher"], loaded["arch"], _ = load_checkpoint(Path(teacher_checkpoint))
            loaded["data"] = load_data(spec.data, spec.seed)
        return pruned_student(loaded["teacher"], loaded["arch"], arch, loaded["data"], spec.seed + index)[1]
    return plan


def within_budget(spec: ChainSpec, index: int, teacher_arch, teacher_checkpoint: Path | None = None) -> list[Candidate]:
    """The candidates that meet the budget; SpecError (one line) when none does: nothing is trained then."""
    cands = candidates(spec, index, teacher_arch, teacher_checkpoint)
    ok = [c for c in cands if not c.over_budget]
    if not ok:
        cheapest = min(cands, key=lambda c: c.cost["params"])
        raise SpecError([f"{field_of(index)}.budget: none of the {len(cands)} candidates of generation "
                         f"{spec.generations[index - 1].name} meets the budget (the smallest, {cheapest.summary}, "
                         f"has {'; '.join(cheapest.over_budget)}); raise the budget or add smaller values to "
                         f"{field_of(index)}.space.width"])
    return ok


class BudgetBroken(Exception):
    """A searched generation trained over its budget's params or FLOPs: the search's promise is broken."""


def budget_kept(search: SearchSpec, name: str, winner: TrialResult, metrics: dict[str, float]) -> list[str]:
    """Holds the trained winner to the budget its search kept: its params and FLOPs (exact, the shape alone
    decides them) over a limit raise BudgetBroken, as does a shape other than the trial's. Latency is measured on
    a machine that may be busy: over the limit, it returns the warning to record."""
    budget, problems = search.budget, []
    for key, limit in (("params", budget.max_params), ("flops", budget.max_flops)):
        if limit is not None and metrics[key] > limit:
            problems.append(f"{key} {metrics[key]:,.0f} > {limit:,}")
        if round(metrics[key]) != round(winner.cost[key]):
            problems.append(f"{key} {metrics[key]:,.0f} where its trial had {winner.cost[key]:,.0f}")
    if problems:
        raise BudgetBroken(f"generation {name} trained over its search's budget ({'; '.join(problems)}); its "
                           "run is recorded but must not be used")
    latency = metrics.get("latency_ms")
    if budget.max_latency_ms is not None and latency is not None and latency > budget.max_latency_ms:
        return [f"latency {latency:.3f} ms measured after training > budget.max_latency_ms "
                f"{budget.max_latency_ms} ms (its trial measured {winner.cost['latency_ms']:.3f} ms; the same "
                "architecture, so this machine was busier)"]
    return []


def budget_problems(spec: ChainSpec, gens: list) -> list[str]:
    """Pre-flight, before anything trains: every searched generation whose teacher's architecture is known now
    (not itself the winner of an earlier search) must have a candidate within budget."""
    problems = []
    for i, g in enumerate(spec.generations, start=1):
        if g.search is None:
            continue
        if g.search.runner.kind == "ray" and importlib.util.find_spec("prefect_ray") is None:
            problems.append(f"{field_of(i)}.runner.kind: ray needs prefect-ray, which is not installed "
                            "(pip install prefect-ray); use threads or dask")
        if any(earlier.search is not None for earlier in spec.generations[:i - 1]):
            break  # the teacher is an earlier search's winner: checked when that search has finished
        problems.extend(depth_problems(spec, i, gens[i - 1].arch))
        try:
            within_budget(spec, i, gens[i - 1].arch)
        except SpecError as e:
            problems.extend(e.lines)
    return problems


def depth_problems(spec: ChainSpec, index: int, teacher_arch) -> list[str]:
    """Depth multipliers that build the same network as another one listed (a student with one conv per stage
    cannot lose convs: depth rounds every stage back up to 1), so the search would train one network twice."""
    search = spec.generations[index - 1].search
    width = search.space.width[0]
    built: dict[str, float] = {}
    for d in search.space.depth:
        arch = candidate_arch(spec, index, teacher_arch, {"width": width, "depth": d})
        key = canonical_json(arch)
        if key in built:
            return [f"{field_of(index)}.space.depth: {built[key]:g} and {d:g} build the same network "
                    f"({describe(arch)}: depth scales the convs per stage and keeps at least one, it removes no "
                    f"stage); keep one of them, or write students with fewer stages out as generations"]
        built[key] = d
    return []


# ---------------------------------------------------------------------------------------------- optuna


def front_objective(search: SearchSpec) -> bool:
    """pareto and knee pick from the accuracy-params front: the sampler explores both (no pruning then)."""
    return type(search.objective).front


def directions(search: SearchSpec) -> list[str]:
    return ["maximize", "minimize"] if front_objective(search) else ["maximize"]


def make_study(search: SearchSpec, journal: Path, name: str, seed: int) -> optuna.Study:
    """A study in a journal file (every worker that reaches the path can report to it); pruning only for one
    objective (Optuna does not prune multi-objective studies)."""
    journal.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    multi = front_objective(search)
    sampler = optuna.samplers.NSGAIISampler(seed=seed) if multi else optuna.samplers.TPESampler(seed=seed)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
              if search.prune and not multi else optuna.pruners.NopPruner())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                               directions=directions(search), load_if_exists=True)


def enqueue_all_if_few(study: optuna.Study, feasible: list[Candidate], trials: int) -> None:
    """When the trials cover every candidate within budget, try each exactly once instead of sampling."""
    if len(feasible) <= trials:
        for c in feasible:
            study.enqueue_trial(c.params, skip_if_exists=True)


def ask(study: optuna.Study, search: SearchSpec, feasible: list[Candidate], asked: set[str],
        tries: int = 200) -> tuple[optuna.Trial, Candidate] | None:
    """The next new candidate within budget, or None when the sampler finds none. A point outside the budget is
    told PRUNED at once (so the sampler learns to avoid it); a point already tried is told its earlier result."""
    by_key = {canonical_json(c.params): c for c in feasible}
    space = {k: v for k, v in search.space.model_dump().items() if v is not None}
    for _ in range(tries):
        if len(asked) >= len(by_key):
            return None
        trial = study.ask()
        params = {k: trial.suggest_categorical(k, v) for k, v in space.items()}
        key = canonical_json(params)
        if key not in by_key:
            trial.set_user_attr("skipped", "over budget")
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif key in asked:
            trial.set_user_attr("skipped", "duplicate")
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            asked.add(key)
            return trial, by_key[key]
    return None


def tell(study: optuna.Study, search: SearchSpec, trial_id: int, result: TrialResult) -> None:
    trial = next(t for t in study.get_trials(deepcopy=False) if t._trial_id == trial_id)
    if result.state == "pruned":
        study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
    elif front_objective(search):
        study.tell(trial.number, [result.val_accuracy, result.cost["params"]])
    else:
        study.tell(trial.number, result.val_accuracy)


# ---------------------------------------------------------------------------------------------- one trial


class _Pruned(Exception):
    pass


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_trial(spec: ChainSpec, index: int, number: int, trial_id: int | None, candidate: Candidate,
              teacher_checkpoint: str, journal: str | None, study_name: str | None,
              torch_threads: int, on_epoch=None) -> TrialResult:
    """Proxy-train one candidate for `proxy_epochs` against the teacher and return its val accuracy. Each epoch's
    val accuracy goes to the study (journal file); a trial the pruner calls hopeless stops there."""
    torch.set_num_threads(torch_threads)  # trials side by side must not oversubscribe the cores
    t0 = time.perf_counter()
    gen_spec = spec.generations[index - 1]
    search = gen_spec.search
    arch = ARCH.validate_python(candidate.arch)
    data = load_data(spec.data, spec.seed)
    teacher, teacher_arch, _ = load_checkpoint(Path(teacher_checkpoint))
    gen = resolve_chain(_with_student(spec, index, arch, candidate.params))[index]
    torch.manual_seed(spec.seed + index)
    if arch.kind == "pruned":  # the teacher itself, pruned to the candidate's width/depth as its plan says
        student = pruned_student(teacher, teacher_arch, arch, data, spec.seed + index)[0]
    else:
        student = build_model(arch, data.num_classes, data.input_shape[0])
    loss = build_loss(gen, student, teacher, data.input_shape)
    trial = None
    if journal and trial_id is not None and search.prune and not front_objective(search):
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
        trial = optuna.trial.Trial(optuna.load_study(study_name=study_name, storage=storage), trial_id)
    last = {"acc": 0.0, "epoch": 0}

    def report(r):
        last.update(acc=r.val_accuracy, epoch=r.epoch)
        if on_epoch:
            on_epoch(r)
        if trial is not None:
            trial.report(r.val_accuracy, r.epoch)
            if r.epoch < search.proxy_epochs and trial.should_prune():
                raise _Pruned()

    state = "complete"
    try:
        fit(student, teacher, loss, data, gen.train.model_copy(update={"epochs": search.proxy_epochs,
                                                                        "threads": torch_threads}),
            seed=spec.seed + index, on_epoch=report, device=pick_device(spec.device),
            view_store=view_store(spec, gen, [Path(teacher_checkpoint)], loss))
    except _Pruned:
        state = "pruned"
    return TrialResult(number=number, params=candidate.params, summary=candidate.summary, arch=candidate.arch,
                       state=state, val_accuracy=last["acc"], epochs=last["epoch"], cost=candidate.cost,
                       worker=worker_name(), seconds=time.perf_counter() - t0)


def _with_student(spec: ChainSpec, index: int, arch, params: dict[str, float]) -> ChainSpec:
    gens = list(spec.generations)
    g = gens[index - 1]
    # a pruned candidate is its plan made from the trained teacher (its record): followed, never planned again
    gens[index - 1] = g.model_copy(update={"student": arch, "distill": candidate_distill(g.distill, params),
                                           "search": None})
    return spec.model_copy(update={"generations": gens})


def apply_winner(spec: ChainSpec, index: int, result: SearchResult) -> ChainSpec:
    """The spec with generation `index`'s student written out as the winner (its distill with the winner's
    temperature/weights) and its search done (None): its cache key, and the next generation's derivation,
    follow from it."""
    win = result.winning()
    return _with_student(spec, index, ARCH.validate_python(win.arch), win.params)


def search_key(spec: ChainSpec, index: int, teacher_digest: str) -> str:
    """What a search's outcome depends on: the generation as written, the data, the seed, the teacher's weights."""
    return spec_hash({"generation": spec.generations[index - 1].model_dump(mode="json"),
                      "data": spec.data.model_dump(mode="json"), "seed": spec.seed, "teacher": teacher_digest,
                      "plans": SEARCH_VERSION})


# 2: pruned candidates are planned from the trained teacher and their plans followed (1 planned them on noise)
SEARCH_VERSION = 2
