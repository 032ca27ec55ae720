"""The chain as a Prefect flow: one task per generation (flows/generation.py), teacher first.

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
import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run as prefect_flow_run
from pydantic import BaseModel

from flows import progress, signals
from flows.generation import GenerationResult, distill_generation, interrupted, reusable, reuse_generation
from kdchain.checkpoints import pin_teacher
from kdchain.checks import check_chain
from kdchain.distill import Diverged
from kdchain.locks import chain_lock_path, generation_lock_path, held, lock_folder
from kdchain.resolve import ResolvedGeneration, chain_digest, fresh_index, generation_key, teacher_indices
from kdchain.search import budget_kept
from kdchain.spec import ChainSpec, load_spec
from kdchain.tracking import Tracker, resolve_uri, sqlite_path, ui_base
from kdchain.tracking.labels import figures
from kdchain.workdir import generation_folder


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
            search = spec.generations[gen.index - 1].search if gen.index > 0 else None
            if search is not None:
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
            if search is not None:
                _searched_generation(tracker, search, searched, result)
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
    family = {r.name: f"runs:/{r.reused_from or r.run_id}" for r in results}  # the weights of every generation
    registered = tracker.register(final.model_uri, spec.registered_name(), chain_run_id,
                                  final.reused_from or final.run_id, host, family)
    tracker.log_chain_report(chain_run_id, spec.name, host)
    _table_artifact(spec, results, tracker, chain_run_id, host)
    tracker.finish_chain(chain_run_id, by_generation=[r.metrics for r in results])
    logger.info("chain %s: registered %s version %s (MLflow chain run %s)", spec.name, spec.registered_name(),
                registered, tracker.run_url(chain_run_id, host))
    return ChainResult(chain_run_id=chain_run_id, experiment_id=tracker.experiment_id, tracking_uri=uri,
                       generations=results, reused=reused, registered=f"{spec.registered_name()}/{registered}",
                       flow_started=started, seconds=time.time() - started, flow_run_id=prefect_flow_run.id)


def _searched_generation(tracker: Tracker, search, searched, result: GenerationResult) -> None:
    """A searched generation's run names its search and winner; the model that trained is held to the budget
    (kdchain.search.budget_kept: params and FLOPs break it with an error, a latency measured over it warns)."""
    tracker.mark_searched(result.run_id, searched.mlflow_run_id, f"search: trial {searched.winner} of "
                          f"{len(searched.trials)}")
    warnings = budget_kept(search, result.name, searched.winning(), result.metrics)
    if warnings:
        tracker.tag_run(result.run_id, {"kdchain.budget.warning": "; ".join(warnings)})
        for line in warnings:
            progress.note(f"{result.name}: warning: {line}")


def _generation(spec: ChainSpec, gen: ResolvedGeneration, results: list[GenerationResult], tracker: Tracker,
                chain_run_id: str, uri: str, locks: Path, fresh: bool) -> GenerationResult:
    """Reuse generation `gen` if it finished under its key anywhere in the store, else train it; under the
    generation's lock, so that two chains needing it at once train it once (the other waits, then reuses it)."""
    teachers = [results[i] for i in teacher_indices(gen)] if gen.index else []  # direct one last
    key = generation_key(spec, gen, "+".join(r.checkpoint_digest for r in teachers) or None)
    out_dir = generation_folder(spec.workdir, spec.name, gen.index, gen.name, key)
    teacher = teachers[-1] if teachers else None

    def waiting(who: str) -> None:
        progress.note(f"{gen.name}: being trained by {who}; waiting to reuse it")

    with held(generation_lock_path(locks, key), f"{spec.name}: {gen.name}", waiting):
        original = None if fresh else reusable(tracker, key, chain_run_id, gen.name)
        if original is not None:
            return reuse_generation(gen.name, gen.index, original.info.run_id, spec.name, spec.experiment_name(),
                                    uri, chain_run_id, teacher.run_id if teacher else None)
        state = distill_generation(spec, gen.name, gen.index, teacher,
                                   results[0].metrics["test_accuracy"] if results else None, key,
                                   str(out_dir.resolve()), chain_run_id, uri, [r.checkpoint for r in teachers[:-1]],
                                   fresh, return_state=True)
        return state.result()


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
