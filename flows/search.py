"""A generation's search as a Prefect subflow: Optuna asks, trials run as concurrent task runs, Optuna is told.

The task runner comes from the generation's `search.runner`: a thread pool here, or Dask worker processes (a local
cluster, or an existing scheduler's workers), so trials spread over cores or machines. Trials get and return
paths and small values (the spec, the teacher's checkpoint path, the study's journal path); every worker must
reach the workdir. Each trial is an MLflow run nested under the generation's search run, tagged with the worker
(host:pid) that trained it. (No `from __future__ import annotations`: Prefect validates the real annotations.)
"""

import json
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows import progress
from kdchain.resolve import resolve_chain
from kdchain.search import (Candidate, SearchResult, TrialResult, ask, enqueue_all_if_few, field_of, knee_floor,
                            make_study, pareto_front, pareto_plot, run_trial, search_key, select_winner, tell,
                            within_budget, worker_name)
from kdchain.spec import ChainSpec, SearchRunner, SpecError
from kdchain.tracking import Tracker


def task_runner(runner: SearchRunner, field: str):
    """The Prefect task runner a search's `runner:` names."""
    if runner.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=runner.workers)
    if runner.kind == "dask":
        from prefect_dask import DaskTaskRunner

        if runner.address:
            return DaskTaskRunner(address=runner.address)
        # one thread per worker process: one trial at a time each, torch limited to runner.torch_threads
        return DaskTaskRunner(cluster_kwargs={"n_workers": runner.workers, "threads_per_worker": 1,
                                              "processes": True, "host": "127.0.0.1", "dashboard_address": None,
                                              "env": _prefect_env()})
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise SpecError([f"{field}.runner.kind: ray needs prefect-ray, which is not installed "
                         "(pip install prefect-ray); use threads or dask"]) from None
    return RayTaskRunner(address=runner.address)


def _prefect_env() -> dict[str, str]:
    """What local Dask workers need to reach this run's Prefect API. With no PREFECT_API_URL (no kept server),
    each new worker process would start a temporary server of its own and time out on a busy machine: hand them
    the temporary server this process already runs instead."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return {}
    server = SubprocessASGIServer()  # the one this process's flows talk to (started already; start() is a no-op)
    server.start()
    return {"PREFECT_API_URL": server.api_url}


@task(name="search-trial", task_run_name="{gen_name}-trial-{number}", cache_policy=NO_CACHE)
def search_trial(spec: ChainSpec, index: int, gen_name: str, number: int, trial_id: int, candidate: Candidate,
                 teacher_checkpoint: str, journal: str, study_name: str, search_run_id: str,
                 tracking_uri: str) -> TrialResult:
    """Proxy-train one candidate wherever the task runner put this task; record it as a nested MLflow run."""
    search = spec.generations[index - 1].search
    tracker = Tracker(tracking_uri, spec.experiment_name())
    run_id = tracker.trial_run(search_run_id, spec.name, gen_name, number, candidate.params, candidate.summary,
                               worker_name())

    def on_epoch(r):
        tracker.log_epoch(run_id, r.epoch, {"train_loss": r.train_loss, "val_accuracy": r.val_accuracy})

    try:
        result = run_trial(spec, index, number, trial_id, candidate, teacher_checkpoint, journal, study_name,
                           search.runner.torch_threads, on_epoch)
    except BaseException as e:
        tracker.fail_run(run_id, f"{type(e).__name__}: {e}")
        raise
    tracker.finish_trial(run_id, {"val_accuracy": result.val_accuracy, **result.cost, "seconds": result.seconds},
                         result.state, result.epochs)
    return result.model_copy(update={"mlflow_run_id": run_id})


@flow(name="search-generation")
def search_generation(spec: ChainSpec, index: int, teacher_checkpoint: str, teacher_digest: str,
                      teacher_val_accuracy: float, chain_run_id: str, tracking_uri: str) -> SearchResult:
    """Trials in rounds of `runner.workers` concurrent task runs until `trials` are done; the winner returned."""
    gen_spec = spec.generations[index - 1]
    search = gen_spec.search
    key = search_key(spec, index, teacher_digest)
    out = (Path(spec.workdir) / spec.name / f"{index}-{gen_spec.name}-search-{key[:12]}").resolve()
    done_file = out / "result.json"
    if done_file.is_file():  # this exact search (spec, data, teacher weights) finished before: reuse it
        progress.note(f"{gen_spec.name}: search reused ({done_file})")
        return SearchResult.model_validate_json(done_file.read_text())
    teacher_arch = resolve_chain(spec)[index - 1].arch  # checked by the flow already
    # planned from the trained teacher: what a trial measures is what it and the winner train; SpecError before any
    # trial when none fits
    feasible = within_budget(spec, index, teacher_arch, Path(teacher_checkpoint))
    tracker = Tracker(tracking_uri, spec.experiment_name())
    search_run_id = tracker.search_run(spec.name, chain_run_id, index, gen_spec.name, search.model_dump_json(indent=2))
    study_name = f"{spec.name}-{gen_spec.name}-{key[:12]}"
    journal = out / "study.journal"
    journal.unlink(missing_ok=True)  # an unfinished earlier attempt: start the study over
    study = make_study(search, journal, study_name, spec.seed)
    enqueue_all_if_few(study, feasible, search.trials)
    total = min(search.trials, len(feasible))
    progress.note(f"{gen_spec.name}: searching {total} of {len(feasible)} candidates within budget, "
                  f"{search.runner.workers} at a time ({search.runner.kind})")
    def submit(trial, candidate):
        return search_trial.submit(spec, index, gen_spec.name, trial.number, trial._trial_id, candidate,
                                   teacher_checkpoint, str(journal), study_name, search_run_id, tracking_uri)

    try:
        results = _trials(study, search, feasible, total, submit, gen_spec.name)
        number, reason = select_winner(search, results, teacher_val_accuracy)
        result = SearchResult(generation=index, trials=results, winner=number, front=pareto_front(results),
                              reason=reason, candidates=len(feasible), mlflow_run_id=search_run_id,
                              floor=knee_floor(search, results))
        plot = pareto_plot(result, out / "pareto.png",
                           f"{spec.name} · {gen_spec.name}: {len(results)} trials, winner {number}")
        result.plot = str(plot)
        tracker.finish_search(search_run_id, number, result.winning().mlflow_run_id, reason, str(plot),
                              result.model_dump_json(indent=2))
    except BaseException as e:
        tracker.fail_run(search_run_id, f"{type(e).__name__}: {e}")
        raise
    _artifacts(spec, gen_spec.name, result)
    out.mkdir(parents=True, exist_ok=True)
    done_file.write_text(result.model_dump_json(indent=2))
    return result


def _trials(study, search, feasible: list[Candidate], total: int, submit, name: str) -> list[TrialResult]:
    """Rounds of `runner.workers` trials at once, each asked of the study and told its result, until `total` ran
    or the sampler finds no new candidate within budget. `submit(trial, candidate)` returns the trial's future."""
    results: list[TrialResult] = []
    asked: set[str] = set()
    while len(results) < total:
        batch = []
        for _ in range(min(search.runner.workers, total - len(results))):
            picked = ask(study, search, feasible, asked)
            if picked is None:
                break
            batch.append((picked[0], submit(*picked)))
        if not batch:
            break
        for trial, future in batch:
            result = future.result()
            tell(study, search, trial._trial_id, result)
            results.append(result)
            progress.note(f"{name}: trial {result.number} {result.summary} {result.params} -> val "
                          f"{result.val_accuracy:.4f} ({result.state}, {result.worker})")
    return results


def _artifacts(spec: ChainSpec, name: str, result: SearchResult) -> None:
    key = "".join(c if c.isalnum() else "-" for c in f"{spec.name}-{name}-search".lower())
    rows = "\n".join(f"| {t.number}{' ⭐' if t.number == result.winner else ''} | {t.summary} | "
                     f"{json.dumps(t.params)} | {t.cost['params']:,.0f} | {t.cost.get('latency_ms', 0):.3f} | "
                     f"{t.val_accuracy:.4f} | {t.state} | {t.worker} |" for t in result.trials)
    create_markdown_artifact(
        key=key, description=f"Search of generation {name}",
        markdown=f"### {spec.name} · {name}: search\nwinner: trial {result.winner} — {result.reason}\n\n"
                 "| trial | architecture | params | #params | latency ms | val acc | state | worker |\n"
                 f"|---|---|---|---|---|---|---|---|\n{rows}\n\nPareto plot: `{result.plot}`")
    create_image_artifact(image_url=Path(result.plot).as_uri(), key=key + "-pareto",
                          description=f"accuracy vs params / latency of {name}'s trials, winner starred")


def searched_spec(spec: ChainSpec, index: int, teacher, teacher_val_accuracy: float, chain_run_id: str,
                  tracking_uri: str) -> tuple[ChainSpec, SearchResult]:
    """Run generation `index`'s search on its configured task runner; the spec with the winner as its student."""
    from kdchain.search import apply_winner

    runner = task_runner(spec.generations[index - 1].search.runner, field_of(index))
    result = search_generation.with_options(task_runner=runner)(
        spec, index, teacher.checkpoint, teacher.checkpoint_digest, teacher_val_accuracy, chain_run_id, tracking_uri)
    return apply_winner(spec, index, result), result
