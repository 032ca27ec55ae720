"""The chain as a Prefect flow: one cached task per generation, teacher first.

The student of generation k is the teacher of k+1, passed as a checkpoint path. A generation's cache key is its
resolved spec plus its teacher checkpoint's digest, and its result is persisted under the chain's workdir, so a
re-run after a crash skips the generations that finished. (No `from __future__ import annotations` here:
Prefect validates the flow's pydantic parameters from the real annotations.)
"""

import contextlib
import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run as prefect_flow_run
from pydantic import BaseModel

from flows import progress
from kdchain.chain import train_generation
from kdchain.checkpoints import CheckpointError, load_checkpoint, pin_teacher
from kdchain.checks import check_chain
from kdchain.distill import Diverged, StateUnreadable, load_train_state
from kdchain.models import describe
from kdchain.resolve import (ResolvedGeneration, chain_digest, file_digest, generation_key, resolve_chain,
                             teacher_indices)
from kdchain.spec import ChainSpec, load_spec
from kdchain.tracking import Tracker, resolve_uri, ui_base
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


class ChainResult(BaseModel):
    chain_run_id: str
    experiment_id: str
    tracking_uri: str
    generations: list[GenerationResult]
    reused: list[str]  # names of the generations taken from the cache
    registered: str | None = None  # "name/version"
    flow_started: float = 0.0  # time.time() when the flow body began (start-up cost = this - the caller's start)
    flow_run_id: str | None = None  # the Prefect flow run (its page: <UI>/runs/flow-run/<id>)
    seconds: float = 0.0


def generation_dir(spec: ChainSpec, gen: ResolvedGeneration, key: str) -> Path:
    return Path(spec.workdir) / spec.name / f"{gen.index}-{gen.name}-{key[:12]}"


@task(name="generation", cache_key_fn=lambda ctx, params: params["cache_key"], persist_result=True,
      task_run_name="{gen_name}")
def distill_generation(spec: ChainSpec, gen_name: str, index: int, teacher: GenerationResult | None,
                       teacher_accuracy: float | None, cache_key: str, out_dir: str, parent_run_id: str,
                       tracking_uri: str, extra_teachers: list[str] = []) -> GenerationResult:
    """Train one generation and record it in its own MLflow run, nested under the chain run.
    `extra_teachers`: checkpoint paths of its other teachers (teachers: ancestors), oldest first."""
    tracker = Tracker(tracking_uri, spec.experiment_name())
    gen = resolve_chain(spec)[index]  # the flow checked the spec before any generation ran
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        saved = load_train_state(out / "train_state.pt")
    except StateUnreadable as e:  # cannot resume: start over in a new run (the old one is ended as KILLED)
        progress.note(f"{gen.name}: {e}; training {gen.name} from epoch 1")
        (out / "train_state.pt").unlink()
        saved = None
    run_id = _generation_run(tracker, spec, gen, teacher, cache_key, parent_run_id, out)
    if saved is not None:
        tracker.backfill_epochs(run_id, {r["epoch"]: _epoch_metrics(r["train_loss"], r["val_accuracy"], r["parts"])
                                         for r in saved.get("history", [])})
        progress.note(f"{gen.name}: resuming after epoch {saved['epoch']}/{gen.train.epochs} "
                      f"(MLflow run {run_id[:8]} continued)")

    t_track = 0.0

    def on_epoch(report):
        nonlocal t_track
        t0 = time.perf_counter()
        tracker.log_epoch(run_id, report.epoch, _epoch_metrics(report.train_loss, report.val_accuracy, report.parts))
        t_track += time.perf_counter() - t0
        progress.epoch(gen.name, report)

    progress.start(gen.name, gen.train.epochs)
    try:
        outcome, model = train_generation(spec, index, Path(teacher.checkpoint) if teacher else None, out, on_epoch,
                                          [Path(p) for p in extra_teachers])
    except BaseException as e:  # Ctrl-C included: the run must not stay RUNNING
        tracker.fail_run(run_id, f"{type(e).__name__}: {e}")
        progress.stop(gen.name)
        raise
    progress.stop(gen.name)
    tracker.log_confusion(run_id, outcome.confusion, outcome.class_names, f"{spec.name} · {gen.name}: test split")
    metrics = {k: rounded(v) for k, v in outcome.metrics.items()}  # as the UI prints them: 0.9972, not 0.99722224
    metrics["retention"] = rounded(metrics["test_accuracy"] / teacher_accuracy if teacher_accuracy else 1.0)
    t0 = time.perf_counter()
    # val_accuracy of the last epoch is already in the run's history at step=epochs; log it once
    final = {k: v for k, v in metrics.items() if not (k == "val_accuracy" and outcome.history)}
    model_uri = tracker.finish_generation(run_id, final, model, outcome.checkpoint)
    t_track += time.perf_counter() - t0
    (out / "run_id").unlink(missing_ok=True)
    return GenerationResult(index=index, name=gen.name, summary=outcome.arch_summary, run_id=run_id,
                            checkpoint=outcome.checkpoint, checkpoint_digest=file_digest(Path(outcome.checkpoint)),
                            model_uri=model_uri, metrics=metrics,
                            seconds={**outcome.seconds, "tracking": t_track})


def _epoch_metrics(train_loss: float, val_accuracy: float, parts: dict[str, float]) -> dict[str, float]:
    return {"train_loss": train_loss, "val_accuracy": val_accuracy, **{f"loss_{k}": v for k, v in parts.items()}}


def _generation_run(tracker: Tracker, spec: ChainSpec, gen: ResolvedGeneration, teacher: GenerationResult | None,
                    cache_key: str, parent_run_id: str, out: Path) -> str:
    """The MLflow run of this generation: the interrupted one when training resumes mid-way, else a new one."""
    run_file = out / "run_id"
    if (out / "train_state.pt").is_file() and run_file.is_file():
        run_id = run_file.read_text().strip()
        if tracker.reopen(run_id):
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
                  fresh: bool = False, marker: str = "") -> ChainResult:
    """Teacher -> A -> B -> ...: each generation a cached task run and an MLflow run under one chain run.
    `marker` (e.g. "retrain") names why the chain ran, in the MLflow chain run's and the flow run's names."""
    started = time.time()
    logger = get_run_logger()
    spec = config if isinstance(config, ChainSpec) else load_spec(config, overrides)
    uri = resolve_uri(tracking_uri, spec.tracking.uri)
    spec = pin_teacher(spec, uri)  # teacher.from models:/x@champion -> models:/x/<version now>: the alias may move
    gens = check_chain(spec)
    tracker = Tracker(uri, spec.experiment_name())
    chain_run_id, resumed = tracker.chain_run(spec, chain_digest(spec), yaml.safe_dump(spec.model_dump(mode="json"),
                                                                                         sort_keys=False),
                                              fresh=fresh, marker=marker)
    killed = tracker.end_stale_runs(chain_run_id)
    if killed:
        logger.info("ended %d generation run(s) a killed process left running", killed)
    storage = (Path(spec.workdir) / "prefect-results").resolve()  # persisted task results = the cache
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
            teachers = [results[i] for i in teacher_indices(gen)] if gen.index else []  # direct one last
            key = generation_key(spec, gen, "+".join(r.checkpoint_digest for r in teachers) or None)
            out_dir = generation_dir(spec, gen, key)
            # reuse only what is really there: a finished MLflow run and a checkpoint that loads
            usable = not fresh and tracker.finished_generation(chain_run_id, key) is not None
            if usable:
                try:
                    load_checkpoint(out_dir / "model.pt")
                except CheckpointError as e:
                    progress.note(f"{gen.name}: {e}; retraining {gen.name}")
                    usable = False
            task_ = distill_generation.with_options(result_storage=storage, refresh_cache=not usable)
            state = task_(spec, gen.name, gen.index, teacher, results[0].metrics["test_accuracy"] if results else None,
                          key, str(out_dir.resolve()), chain_run_id, uri,
                          [r.checkpoint for r in teachers[:-1]], return_state=True)
            result = state.result()
            if state.name == "Cached":
                reused.append(gen.name)
                progress.reused(gen.name, result)
            else:  # a retrain replaces any earlier finished run of this generation: it must not count twice
                tracker.supersede(chain_run_id, gen.index, result.run_id)
            if searched is not None:
                tracker.mark_searched(result.run_id, searched.mlflow_run_id, f"search: trial {searched.winner} of "
                                      f"{len(searched.trials)}")
            results.append(result)
            teacher = result
            logger.info("%s%s: %s · %s (MLflow run %s)", result.name, " (reused)" if state.name == "Cached" else "",
                        figures(result.metrics), result.summary, tracker.run_url(result.run_id, host))
    except BaseException as e:
        with contextlib.suppress(Exception):  # a store that cannot be written must not hide the first error
            tracker.finish_chain(chain_run_id, status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        if isinstance(e, Diverged):
            where = "teacher" if gen.index == 0 else f"generations.{gen.index - 1}"
            raise Diverged(f"generation {gen.name} ({where}): {e}") from None
        raise

    registered = tracker.register(results[-1].model_uri, spec.registered_name(), chain_run_id, results[-1].run_id,
                                  host)
    tracker.log_chain_report(chain_run_id, spec.name, host)
    _table_artifact(spec, results, tracker, chain_run_id, host)
    tracker.finish_chain(chain_run_id, by_generation=[r.metrics for r in results])
    logger.info("chain %s: registered %s version %s (MLflow chain run %s)", spec.name, spec.registered_name(),
                registered, tracker.run_url(chain_run_id, host))
    return ChainResult(chain_run_id=chain_run_id, experiment_id=tracker.experiment_id, tracking_uri=uri,
                       generations=results, reused=reused, registered=f"{spec.registered_name()}/{registered}",
                       flow_started=started, seconds=time.time() - started, flow_run_id=prefect_flow_run.id)


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
