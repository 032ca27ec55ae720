"""The chain as a Prefect flow: one cached task per generation, teacher first.

The student of generation k is the teacher of k+1, passed as a checkpoint path. A generation's key is its content
(resolved spec, data and fingerprint, seed, its teachers' checkpoint digests): a generation that FINISHED under that
key in any chain run of the store, with a checkpoint that loads, is reused, not trained (kdchain.tracking.reuse).
MLflow's FINISHED run decides, not a Prefect cache record: a record is keyed by content but names the run that
wrote it, and a reused generation needs a run of its own under the new chain run.

Locks (kdchain.locks): one process per chain at a time (a second one waits, then reuses what the first trained), and
one trainer per generation key across chains (a waiter reuses the result, or trains if the holder was killed).
(No `from __future__ import annotations` here: Prefect validates the flow's pydantic parameters from the real
annotations.)
"""

import contextlib
import os
import signal
import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.exceptions import TerminationSignal
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as prefect_flow_run
from pydantic import BaseModel

from flows import progress, signals
from kdchain.chain import train_generation
from kdchain.checkpoints import CheckpointError, is_model_uri, load_checkpoint, pin_teacher
from kdchain.checks import check_chain
from kdchain.distill import Diverged, StateUnreadable, load_train_state
from kdchain.locks import chain_lock_path, generation_lock_path, held, lock_folder
from kdchain.models import describe
from kdchain.resolve import (ResolvedGeneration, chain_digest, file_digest, fresh_index, generation_key,
                             resolve_chain, teacher_indices)
from kdchain.spec import ChainSpec, load_spec
from kdchain.tracking import Tracker, resolve_uri, source_model_uri, sqlite_path, ui_base
from kdchain.tracking.reuse import (CHECKPOINT, CHECKPOINT_DIGEST, MODEL_URI, REUSED_FROM, final_metrics,
                                    finished_with_key, missing_at_step, record_reuse, run_parent,
                                    run_status)
from kdchain.tracking.labels import figures, rounded


class GenerationResult(BaseModel):
    """What one generation hands to the next and to the table: small values only, never a model."""

    index: int
    name: str
    summary: str
    run_id: str
    checkpoint: str
    checkpoint_digest: str
    model_uri: str
    metrics: dict[str, float]
    seconds: dict[str, float] = {}
    reused_from: str | None = None  # the run that trained it, when this chain run reused it


class ChainResult(BaseModel):
    chain_run_id: str
    experiment_id: str
    tracking_uri: str
    generations: list[GenerationResult]
    reused: list[str]  # names of the generations reused, not trained
    registered: str | None = None  # "name/version"
    flow_started: float = 0.0  # time.time() when the flow body began (start-up cost = this - the caller's start)
    flow_run_id: str | None = None  # the Prefect flow run (its page: <UI>/runs/flow-run/<id>)
    seconds: float = 0.0


def generation_dir(spec: ChainSpec, gen: ResolvedGeneration, key: str) -> Path:
    return Path(spec.workdir) / spec.name / f"{gen.index}-{gen.name}-{key[:12]}"


@task(name="generation", task_run_name="{gen_name}", cache_policy=NO_CACHE)  # reuse is decided by _reusable
def distill_generation(spec: ChainSpec, gen_name: str, index: int, teacher: GenerationResult | None,
                       teacher_accuracy: float | None, cache_key: str, out_dir: str, parent_run_id: str,
                       tracking_uri: str, extra_teachers: list[str] = [], fresh: bool = False) -> GenerationResult:
    """Train one generation and record it in its own MLflow run, nested under the chain run.
    `extra_teachers`: checkpoint paths of its other teachers (teachers: ancestors), oldest first.

    Its end is a small transaction: the resume state of the last epoch stays until the run is FINISHED, so whatever
    a kill interrupts after it (evaluation, profile, export, logging) is redone from the saved weights with 0 epochs
    trained, and each metric step and the logged model are written once."""
    tracker = Tracker(tracking_uri, spec.experiment_name())
    gen = resolve_chain(spec)[index]  # the flow checked the spec before any generation ran
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    saved = _resume_state(out, tracker, gen.name, fresh)
    run_id = _generation_run(tracker, spec, gen, teacher, cache_key, parent_run_id, out)
    if saved is not None:
        tracker.backfill_epochs(run_id, {r["epoch"]: _epoch_metrics(r["train_loss"], r["val_accuracy"], r["parts"])
                                         for r in saved.get("history", [])})
        progress.note(f"{gen.name}: resuming after epoch {saved['epoch']}/{gen.train.epochs} "
                      f"(MLflow run {run_id[:8]} continued)")

    t_track = 0.0

    def on_epoch(report):
        nonlocal t_track, run_id, saved
        if saved is not None and report.epoch <= saved["epoch"]:
            # training dropped the state (saved beside other frozen weights): its epochs are trained again, in a
            # new run, so that the old run's history is not logged a second time
            progress.note(f"{gen.name}: the resume state after epoch {saved['epoch']} does not fit the model any "
                          f"more; training {gen.name} from epoch 1 in a new MLflow run")
            tracker.fail_run(run_id, "its resume state did not fit the model; trained again in a new run", "KILLED")
            saved = None
            (out / "run_id").unlink(missing_ok=True)  # a new run, though the state of this epoch is saved by now
            run_id = _generation_run(tracker, spec, gen, teacher, cache_key, parent_run_id, out)
        if report.epoch == report.epochs:  # its resume state has just been saved; nothing of it is logged yet
            _test_kill_point(gen.name, "saved")
        t0 = time.perf_counter()
        tracker.log_epoch(run_id, report.epoch, _epoch_metrics(report.train_loss, report.val_accuracy, report.parts))
        t_track += time.perf_counter() - t0
        progress.epoch(gen.name, report)

    progress.start(gen.name, gen.train.epochs)
    try:
        outcome, model = train_generation(spec, index, Path(teacher.checkpoint) if teacher else None, out, on_epoch,
                                          [Path(p) for p in extra_teachers])
    except BaseException as e:  # Ctrl-C included: the run must not stay RUNNING
        tracker.fail_run(run_id, f"{type(e).__name__}: {e}", "KILLED" if interrupted(e) else "FAILED")
        progress.stop(gen.name)
        raise
    progress.stop(gen.name)
    if outcome.teacher_outputs.startswith("stored views"):  # the FKD recipe: say where the outputs came from
        progress.note(f"{gen.name}: {outcome.teacher_outputs}")
    _test_kill_point(gen.name, "trained")
    tracker.log_confusion(run_id, outcome.confusion, outcome.class_names, f"{spec.name} · {gen.name}: test split")
    if outcome.skipped:  # the metric skipped_files counts them
        tracker.log_skipped(run_id, outcome.skipped)
    if outcome.export_warning:  # the generation is kept; its run says why it has no ONNX file
        tracker.warn(run_id, outcome.export_warning)
        progress.note(f"{gen.name}: warning: {outcome.export_warning}")
    tracker.tag_run(run_id, outcome.tags)
    metrics = {k: rounded(v) for k, v in outcome.metrics.items()}  # as the UI prints them: 0.9972, not 0.99722224
    metrics["retention"] = rounded(metrics["test_accuracy"] / teacher_accuracy if teacher_accuracy else 1.0)
    t0 = time.perf_counter()
    # each final metric once at step 0 (charts show them as bars, not against epochs), also on a rerun; the last
    # epoch's val_accuracy is already in the run's history at step=epochs
    final = missing_at_step(tracker.client, run_id, {k: v for k, v in metrics.items()
                                                      if not (k == "val_accuracy" and outcome.history)}, 0)
    checkpoint = Path(outcome.checkpoint).resolve()
    digest = file_digest(checkpoint)
    source = spec.teacher.from_ if index == 0 else None  # a teacher from this store is pointed at, not copied
    model_uri = tracker.finish_generation(run_id, final, model, str(checkpoint),
                                          tags={CHECKPOINT: str(checkpoint), CHECKPOINT_DIGEST: digest},
                                          loaded=source is not None, model_uri=source_model_uri(source, tracking_uri)
                                          if source and is_model_uri(source) else None)
    t_track += time.perf_counter() - t0
    _test_kill_point(gen.name, "recorded")
    (out / "train_state.pt").unlink(missing_ok=True)  # recorded: the resume state is no longer needed
    (out / "run_id").unlink(missing_ok=True)
    return GenerationResult(index=index, name=gen.name, summary=outcome.arch_summary, run_id=run_id,
                            checkpoint=str(checkpoint), checkpoint_digest=digest, model_uri=model_uri,
                            metrics=metrics, seconds={**outcome.seconds, "tracking": t_track})


@task(name="generation (reused)", task_run_name="{gen_name} (reused)", cache_policy=NO_CACHE)
def reuse_generation(gen_name: str, index: int, original_run_id: str, chain_name: str, experiment: str,
                     tracking_uri: str, parent_run_id: str, teacher_run_id: str | None) -> GenerationResult:
    """Record a generation finished in another chain run as this chain run's: a FINISHED run with
    kdchain.reused_from, its metrics copied, its checkpoint and model those of the original. Nothing is trained."""
    tracker = Tracker(tracking_uri, experiment)
    original = tracker.client.get_run(original_run_id)
    run_id = original_run_id
    if original.data.tags.get("mlflow.parentRunId") != parent_run_id:
        run_id = record_reuse(tracker.client, tracker.experiment_id, original, parent_run_id,
                              f"{chain_name} · {gen_name} (reused)", teacher_run_id)
    return _result_of(tracker.client.get_run(run_id), index, gen_name)


def _result_of(run, index: int, name: str) -> GenerationResult:
    tags = run.data.tags
    return GenerationResult(index=index, name=name, summary=tags.get("mlflow.note.content", ""),
                            run_id=run.info.run_id, checkpoint=tags[CHECKPOINT],
                            checkpoint_digest=tags[CHECKPOINT_DIGEST], model_uri=tags[MODEL_URI],
                            metrics=final_metrics(run), reused_from=tags.get(REUSED_FROM, run.info.run_id))


def _test_kill_point(gen_name: str, point: str) -> None:
    """For tests only: KDCHAIN_TEST_KILL_AT=<generation>:<saved|trained|recorded> ends this process there with
    SIGKILL, as a power cut would (saved: right after the last epoch's resume state is written);
    KDCHAIN_TEST_STALL_AT=<generation>:<point> stops it there until something kills it."""
    if os.environ.get("KDCHAIN_TEST_KILL_AT") == f"{gen_name}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("KDCHAIN_TEST_STALL_AT") == f"{gen_name}:{point}":
        progress.note(f"{gen_name}: stalled at {point} (KDCHAIN_TEST_STALL_AT)")
        while True:
            time.sleep(1)


def _resume_state(out: Path, tracker: Tracker, name: str, fresh: bool) -> dict | None:
    """The resume state in `out`, or None. A state whose run is already FINISHED (a kill between FINISHED and
    cleaning up) or one that `--fresh` retrains is dropped: training starts at epoch 1."""
    state, run_file = out / "train_state.pt", out / "run_id"
    if fresh or (run_file.is_file() and run_status(tracker.client, run_file.read_text().strip()) == "FINISHED"):
        state.unlink(missing_ok=True)
        run_file.unlink(missing_ok=True)
    try:
        return load_train_state(state)
    except StateUnreadable as e:  # cannot resume: start over in a new run (the old one is ended as KILLED)
        progress.note(f"{name}: {e}; training {name} from epoch 1")
        state.unlink()
        return None


def interrupted(e: BaseException) -> bool:
    """Ctrl-C, SIGTERM (inside a flow Prefect raises TerminationSignal for it) or a lost Prefect server
    (flows/signals.py): the runs end KILLED and a rerun resumes them."""
    return isinstance(e, (KeyboardInterrupt, TerminationSignal))


def _epoch_metrics(train_loss: float, val_accuracy: float, parts: dict[str, float]) -> dict[str, float]:
    return {"train_loss": train_loss, "val_accuracy": val_accuracy, **{f"loss_{k}": v for k, v in parts.items()}}


def _generation_run(tracker: Tracker, spec: ChainSpec, gen: ResolvedGeneration, teacher: GenerationResult | None,
                    cache_key: str, parent_run_id: str, out: Path) -> str:
    """The MLflow run of this generation: the interrupted one when training resumes mid-way, else a new one."""
    run_file = out / "run_id"
    if (out / "train_state.pt").is_file() and run_file.is_file():
        run_id = run_file.read_text().strip()
        # only a run of this chain run: a state left by another chain's killed process resumes in a new run
        if run_parent(tracker.client, run_id) == parent_run_id and tracker.reopen(run_id):
            return run_id
    run_id = tracker.generation_run(spec, parent_run_id, gen.index, gen.name, teacher.run_id if teacher else None,
                                    cache_key, gen.arch, describe(gen.arch))
    run_file.write_text(run_id)
    return run_id


def chain_run_name() -> str:
    """The flow run's name in the Prefect UI: `digits-chain · seed 0` (`· retrain` when retraining), not a random
    `discreet-walrus`."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    try:
        config = params["config"]
        spec = config if isinstance(config, ChainSpec) else load_spec(config, params.get("overrides") or [])
    except Exception:  # a bad config fails in the flow body with its own message
        return "distill-chain"
    return " · ".join(p for p in (spec.name, f"seed {spec.seed}", params.get("marker")) if p)


@flow(name="distill-chain", log_prints=False, flow_run_name=chain_run_name)
def distill_chain(config: ChainSpec | str, overrides: list[str] = [], tracking_uri: str | None = None,
                  fresh: bool | str = False, marker: str = "") -> ChainResult:
    """Teacher -> A -> B -> ...: each generation a task run and an MLflow run under one chain run; a generation
    finished under the same key in any chain run of the store is reused. `fresh`: True (or "teacher") retrains
    every generation, a generation's name retrains it and every later one; either starts a new chain run.
    `marker` (e.g. "retrain") names why the chain ran, in the MLflow chain run's and the flow run's names."""
    started = time.time()
    signals.claim_sigterm()  # under `kdchain run`: SIGTERM ends the runs like Ctrl-C (flows/signals.py)
    logger = get_run_logger()
    spec = config if isinstance(config, ChainSpec) else load_spec(config, overrides)
    uri = resolve_uri(tracking_uri, spec.tracking.uri)
    fresh_from = fresh_index(spec, fresh)
    spec = pin_teacher(spec, uri)  # teacher.from models:/x@champion -> models:/x/<version now>: the alias may move
    gens = check_chain(spec)
    locks = lock_folder(sqlite_path(uri), spec.workdir)

    def waiting(who: str) -> None:
        _say(logger, f"chain {spec.name} is already running ({who}); waiting for it to finish, then reusing "
                     "what it trained")

    # one process per chain (config, workdir, store): a second one never writes into the first one's runs
    with held(chain_lock_path(locks, chain_digest(spec)), f"chain {spec.name}", waiting):
        return _run_chain(spec, gens, uri, fresh_from, locks, started, logger, marker)


def _say(logger, text: str) -> None:
    progress.note(text)  # the terminal of `kdchain run`
    logger.info(text)  # the flow run's log in the Prefect UI


def _run_chain(spec: ChainSpec, gens: list[ResolvedGeneration], uri: str, fresh_from: int | None, locks: Path,
               started: float, logger, marker: str = "") -> ChainResult:
    tracker = Tracker(uri, spec.experiment_name())
    chain_run_id, resumed = tracker.chain_run(spec, chain_digest(spec), yaml.safe_dump(spec.model_dump(mode="json"),
                                                                                         sort_keys=False),
                                              fresh=fresh_from is not None, marker=marker)
    killed = tracker.end_stale_runs(chain_run_id)
    if killed:
        logger.info("ended %d generation run(s) a killed process left running", killed)
    host = ui_base(uri, spec.tracking.ui_url)

    results: list[GenerationResult] = []
    reused: list[str] = []
    teacher: GenerationResult | None = None
    try:
        for gen in gens:
            searched = None
            if gen.index > 0 and spec.generations[gen.index - 1].search is not None:
                from flows.search import searched_spec  # the winner becomes this generation's student

                spec, searched = searched_spec(spec, gen.index, teacher, teacher.metrics["val_accuracy"],
                                               chain_run_id, uri)
                gens[:] = check_chain(spec)  # in place: this and later generations follow from the winner
                gen = gens[gen.index]
            fresh = fresh_from is not None and gen.index >= fresh_from
            result = _generation(spec, gen, results, tracker, chain_run_id, uri, locks, fresh)
            if result.reused_from is not None:
                reused.append(gen.name)
                progress.reused(gen.name, result)
            # a retrain (or a reuse) replaces any earlier finished run of this generation: it must not count twice
            tracker.supersede(chain_run_id, gen.index, result.run_id)
            if searched is not None:
                tracker.mark_searched(result.run_id, searched.mlflow_run_id, f"search: trial {searched.winner} of "
                                      f"{len(searched.trials)}")
            results.append(result)
            teacher = result
            logger.info("%s%s: %s · %s (MLflow run %s)", result.name, " (reused)" if result.reused_from else "",
                        figures(result.metrics), result.summary, tracker.run_url(result.run_id, host))
    except BaseException as e:
        with contextlib.suppress(Exception):  # a store that cannot be written must not hide the first error
            if interrupted(e):  # whatever the interruption stopped mid-way is ended KILLED too
                tracker.end_stale_runs(chain_run_id)
            tracker.finish_chain(chain_run_id, status="KILLED" if interrupted(e) else "FAILED")
        if isinstance(e, Diverged):
            where = "teacher" if gen.index == 0 else f"generations.{gen.index - 1}"
            raise Diverged(f"generation {gen.name} ({where}): {e}") from None
        raise

    # a reused final student is registered once: the version is looked up by the run that trained it
    final = results[-1]
    registered = tracker.register(final.model_uri, spec.registered_name(), chain_run_id,
                                  final.reused_from or final.run_id, host)
    tracker.log_chain_report(chain_run_id, spec.name, host)
    _table_artifact(spec, results, tracker, chain_run_id, host)
    tracker.finish_chain(chain_run_id, by_generation=[r.metrics for r in results])
    logger.info("chain %s: registered %s version %s (MLflow chain run %s)", spec.name, spec.registered_name(),
                registered, tracker.run_url(chain_run_id, host))
    return ChainResult(chain_run_id=chain_run_id, experiment_id=tracker.experiment_id, tracking_uri=uri,
                       generations=results, reused=reused, registered=f"{spec.registered_name()}/{registered}",
                       flow_started=started, seconds=time.time() - started, flow_run_id=prefect_flow_run.id)


def _generation(spec: ChainSpec, gen: ResolvedGeneration, results: list[GenerationResult], tracker: Tracker,
                chain_run_id: str, uri: str, locks: Path, fresh: bool) -> GenerationResult:
    """Reuse generation `gen` if it finished under its key anywhere in the store, else train it; under the
    generation's lock, so that two chains needing it at once train it once (the other waits, then reuses it)."""
    teachers = [results[i] for i in teacher_indices(gen)] if gen.index else []  # direct one last
    key = generation_key(spec, gen, "+".join(r.checkpoint_digest for r in teachers) or None)
    out_dir = generation_dir(spec, gen, key)
    teacher = teachers[-1] if teachers else None

    def waiting(who: str) -> None:
        progress.note(f"{gen.name}: being trained by {who}; waiting to reuse it")

    with held(generation_lock_path(locks, key), f"{spec.name}: {gen.name}", waiting):
        original = None if fresh else _reusable(tracker, key, chain_run_id, gen.name)
        if original is not None:
            return reuse_generation(gen.name, gen.index, original.info.run_id, spec.name, spec.experiment_name(),
                                    uri, chain_run_id, teacher.run_id if teacher else None)
        state = distill_generation(spec, gen.name, gen.index, teacher,
                                   results[0].metrics["test_accuracy"] if results else None, key,
                                   str(out_dir.resolve()), chain_run_id, uri, [r.checkpoint for r in teachers[:-1]],
                                   fresh, return_state=True)
        return state.result()


def _reusable(tracker: Tracker, key: str, chain_run_id: str, name: str):
    """The finished run of this key to reuse, this chain run's own first, whose checkpoint loads and still has the
    digest it was recorded with (a retrain in the same folder replaces it); None when there is none."""
    runs = sorted(finished_with_key(tracker.client, key),
                  key=lambda r: r.data.tags.get("mlflow.parentRunId") != chain_run_id)  # stable: newest first
    problem, digests = None, {}  # reused runs share their original's checkpoint: load and hash each file once
    for run in runs:
        path = Path(run.data.tags[CHECKPOINT])
        if path not in digests:
            try:
                load_checkpoint(path)
                digests[path] = file_digest(path)
            except CheckpointError as e:
                digests[path] = None
                problem = problem or str(e)
        if digests[path] is None:
            continue
        if digests[path] == run.data.tags[CHECKPOINT_DIGEST]:
            return run
        problem = problem or f"checkpoint {path} was replaced since run {run.info.run_id[:8]} recorded it"
    if problem:
        progress.note(f"{name}: {problem}; retraining {name}")
    return None


def _table_artifact(spec: ChainSpec, results: list[GenerationResult], tracker: Tracker, chain_run_id: str,
                    host: str) -> None:
    """In the Prefect UI: the generation table (a table and, with clickable links, markdown) and a link to the
    MLflow experiment's runs page."""
    rows = [{"generation": r.name, "architecture": r.summary, **{k: round(v, 4) for k, v in r.metrics.items()},
             "mlflow_run": tracker.run_url(r.run_id, host)} for r in results]
    key = "".join(c if c.isalnum() else "-" for c in spec.name.lower())
    create_table_artifact(table=rows, key=f"{key}-generations", description=f"Generations of chain {spec.name}")
    cols = ["test_accuracy", "params", "latency_ms", "retention", "teacher_agreement"]
    md = [f"# {spec.name}: generations", "",
          f"MLflow: [experiment runs]({tracker.experiment_url(host)}) · [chain run]({tracker.run_url(chain_run_id, host)})",
          "", "| generation | architecture | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for r in results:
        md.append(f"| [{r.name}]({tracker.run_url(r.run_id, host)}) | {r.summary} | "
                  + " | ".join(f"{r.metrics.get(c, float('nan')):.4g}" for c in cols) + " |")
    create_markdown_artifact("\n".join(md), key=f"{key}-generations-md",
                             description=f"Generations of chain {spec.name}, linked to their MLflow runs")
    create_link_artifact(tracker.experiment_url(host), link_text=f"MLflow experiment {spec.experiment_name()}",
                         key=f"{key}-mlflow", description="the chain's runs in the MLflow UI")
