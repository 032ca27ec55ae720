"""A sweep as a Prefect flow: its chains run at once as task runs on a task runner, each one a `distill-chain`
subflow run and its own chain run in MLflow; the summary goes on the sweep's MLflow run and a Prefect table.

The task runner is the search's (flows/search.py): a thread pool, or Dask worker processes (a local cluster that
is handed this process's Prefect API, the temporary server included, or an existing scheduler's workers). A chain
that fails does not stop the others: its row of the summary says so, and the sweep's flow run and MLflow run end
Failed. (No `from __future__ import annotations`: Prefect validates the real annotations.)
"""

import contextlib
import logging
import time

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run as prefect_flow_run
from prefect.states import Completed, Failed
from pydantic import BaseModel

from flows import progress
from flows.chain import distill_chain
from flows.command_helpers import quiet_console
from flows.generation import interrupted
from flows.search import task_runner
from kdchain.resolve import chain_digest
from kdchain.spec import SweepSpec, flatten
from kdchain.sweep import ChainOutcome, SummaryRow, SweepJob, summarize, summary_records
from kdchain.tracking import resolve_uri
from kdchain.tracking.sweep import (attach_chain, chain_run_of, end_sweep_run, end_unfinished_chains, finish_sweep_run,
                                    start_sweep_run)


class SweepResult(BaseModel):
    sweep_run_id: str
    tracking_uri: str
    experiment: str
    outcomes: list[ChainOutcome]
    rows: list[SummaryRow]
    records: list[dict]  # the summary as the sweep run's table holds it
    seconds: float
    flow_run_id: str | None = None

    @property
    def failed(self) -> list[ChainOutcome]:
        return [o for o in self.outcomes if o.status != "FINISHED"]


@task(name="sweep-chain", task_run_name="{job.label} · seed {job.seed}", cache_policy=NO_CACHE)
def sweep_chain(job: SweepJob, tracking_uri: str | None, sweep_run_id: str) -> ChainOutcome:
    """One chain of the sweep, as a `distill-chain` subflow run wherever the task runner put this task."""
    t0 = time.time()
    quiet_console()  # in a Dask worker process too: Prefect's warnings only, no run tracebacks (one line instead)
    uri = resolve_uri(tracking_uri, job.spec.tracking.uri)
    try:
        # the grid point in the chain run's and the flow run's names: `digits-chain · seed 0 · <digest> · C.train...`
        result = distill_chain(job.spec, tracking_uri=tracking_uri, marker=job.label)
    except BaseException:
        with contextlib.suppress(Exception):  # a store that cannot be read must not hide the chain's own error
            chain = chain_run_of(uri, job.spec.experiment_name(), chain_digest(job.spec))
            if chain is not None:  # a chain that failed mid-way still belongs to the sweep
                attach_chain(uri, sweep_run_id, chain, job.label, job.seed)
        raise
    attach_chain(uri, sweep_run_id, result.chain_run_id, job.label, job.seed)
    gens = [{"name": g.name, "summary": g.summary, "test_accuracy": g.metrics["test_accuracy"],
             "params": g.metrics["params"], "reused": g.name in result.reused} for g in result.generations]
    return ChainOutcome(point=job.point, label=job.label, seed=job.seed, status="FINISHED", generations=gens,
                        chain_run_id=result.chain_run_id, seconds=time.time() - t0)



def _failed(job: SweepJob, error: BaseException, uri: str) -> ChainOutcome:
    first = (str(error).strip().splitlines() or [""])[0]
    chain = None
    with contextlib.suppress(Exception):
        chain = chain_run_of(uri, job.spec.experiment_name(), chain_digest(job.spec))
    return ChainOutcome(point=job.point, label=job.label, seed=job.seed, status="FAILED",
                        error=f"{type(error).__name__}: {first}"[:500], chain_run_id=chain)


def _line(o: ChainOutcome, done: int, total: int) -> str:
    if o.status != "FINISHED":
        return f"  {done}/{total} {o.label} · seed {o.seed}: FAILED: {o.error}"
    figures = " → ".join(f"{g['name']} {g['test_accuracy']:.2%}{' (reused)' if g['reused'] else ''}"
                         for g in o.generations)
    return f"  {done}/{total} {o.label} · seed {o.seed}: {figures} (chain run {o.chain_run_id[:8]}, {o.seconds:.0f} s)"


def sweep_run_name() -> str:
    params = prefect_flow_run.parameters
    return f"sweep · {params.get('title', '')}"


@flow(name="kdchain-sweep", flow_run_name=sweep_run_name, log_prints=False)
def sweep(jobs: list[SweepJob], title: str, settings: SweepSpec, tracking_uri: str | None = None):
    """Every job a task run at once (as many at a time as the task runner has workers); as each chain ends, one
    line; then the summary on the MLflow sweep run and as a Prefect table. Ends Failed when a chain failed."""
    started = time.time()
    logger = get_run_logger()
    base = jobs[0].spec
    uri = resolve_uri(tracking_uri, base.tracking.uri)
    description = (f"kdchain sweep of {settings.config}: {len(jobs)} chains, "
                   f"{len({j.point for j in jobs})} grid point(s) × seeds {' '.join(map(str, settings.seeds))}")
    params = {k: v for k, v in flatten(settings).items() if k != "runner.torch_threads"}  # trials only
    run_id = start_sweep_run(uri, base.experiment_name(), title, params, description)
    outcomes: list[ChainOutcome] = []
    try:
        futures = [sweep_chain.submit(job, tracking_uri, run_id) for job in jobs]
        job_of = {f.task_run_id: job for f, job in zip(futures, jobs)}
        for future in as_completed(futures):
            job = job_of[future.task_run_id]
            try:
                outcome = future.result()
            except Exception as e:  # the chain's own failure: the others go on
                outcome = _failed(job, e, uri)
            outcomes.append(outcome)
            line = _line(outcome, len(outcomes), len(jobs))
            progress.console.print(line, soft_wrap=True)
            logger.info(line.strip())
        rows = summarize(outcomes)
        records = summary_records(rows, settings.seeds)
        failed = [f"{o.label} · seed {o.seed}: {o.error}" for o in outcomes if o.status != "FINISHED"]
        finish_sweep_run(uri, run_id, records, title, failed)
    except BaseException as e:
        end_sweep_run(uri, run_id, "KILLED" if interrupted(e) else "FAILED")
        raise
    if records:
        create_table_artifact(records, key="kdchain-sweep", description=f"sweep {title}: test accuracy mean ± std")
    result = SweepResult(sweep_run_id=run_id, tracking_uri=uri, experiment=base.experiment_name(),
                         outcomes=sorted(outcomes, key=lambda o: (o.point, o.seed)), rows=rows, records=records,
                         seconds=time.time() - started, flow_run_id=prefect_flow_run.id)
    if failed:
        return Failed(message=f"{len(failed)} of {len(jobs)} chains failed", data=result)
    return Completed(data=result)


def run_sweep(jobs: list[SweepJob], title: str, settings: SweepSpec, tracking_uri: str | None = None) -> SweepResult:
    """The sweep on the task runner `settings.runner` names; its result, whether or not a chain failed."""
    runner = task_runner(settings.runner, "--runner")
    # distributed sets its loggers' levels on import: "worker process still alive after 4 s, killing" as the
    # local cluster closes is no news to a user
    logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
    started_ms = int(time.time() * 1000)
    try:
        state = sweep.with_options(task_runner=runner)(jobs, title, settings, tracking_uri, return_state=True)
    except BaseException as e:  # Ctrl-C, SIGTERM: the task runner has stopped its workers by now
        end_unfinished_chains([(resolve_uri(tracking_uri, j.spec.tracking.uri), j.spec.experiment_name(),
                                chain_digest(j.spec)) for j in jobs], started_ms,
                              "KILLED" if interrupted(e) else "FAILED")
        raise
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):  # the sweep itself broke (not one of its chains): its own error
        raise result
    return result
