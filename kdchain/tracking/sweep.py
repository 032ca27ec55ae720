"""A sweep's MLflow run: the parent of its chain runs, holding the summary.

Tagged kdchain.kind=sweep, so `kdchain compare`, `kdchain runs` and the chain look-ups (which read kind=chain) never
take it for a chain. Each chain run it ran gets kdchain.sweep_run_id (the latest sweep that used it) and, when it had
no parent yet, mlflow.parentRunId: the MLflow UI folds a sweep's chains under it (a chain run reused from an earlier
sweep stays under the first one). The summary goes on as an MLflow table (sweep.json), as markdown (sweep.md), and
as metrics per generation with step = the grid point's index, so that a chart reads across the grid.
"""

import contextlib
from datetime import datetime

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from kdchain.measure.plots import markdown_table
from kdchain.tracking.runs import Tracker
from kdchain.tracking.store import CHAIN_DIGEST, KIND, PARENT, chunks, now_ms

SWEEP_RUN, SWEEP_POINT = "kdchain.sweep_run_id", "kdchain.sweep_point"
SUMMARY_JSON, SUMMARY_MD = "sweep.json", "sweep.md"


def start_sweep_run(uri: str, experiment: str, title: str, params: dict[str, str], description: str) -> str:
    """A new RUNNING sweep run named `sweep · <title> · <time>`, with the sweep's settings as params."""
    tracker = Tracker(uri, experiment)
    run = tracker.client.create_run(tracker.experiment_id, run_name=f"sweep · {title} · {datetime.now():%m-%d %H:%M}",
                                    tags={KIND: "sweep", "mlflow.note.content": description})
    for chunk in chunks([Param(k, str(v)[:6000]) for k, v in params.items()], 100):
        tracker.client.log_batch(run.info.run_id, params=chunk, synchronous=True)
    return run.info.run_id


def chain_run_of(uri: str, experiment: str, digest: str) -> str | None:
    """The newest chain run of this exact spec (kdchain.chain_digest), e.g. one whose chain failed mid-way."""
    tracker = Tracker(uri, experiment)
    runs = tracker.client.search_runs([tracker.experiment_id],
                                      f"tags.`{KIND}` = 'chain' and tags.`{CHAIN_DIGEST}` = '{digest}'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def attach_chain(uri: str, sweep_run_id: str, chain_run_id: str, label: str, seed: int) -> None:
    """Mark a chain run as this sweep's (grid point and seed); fold it under the sweep run if it has no parent."""
    client = MlflowClient(uri)
    tags = [RunTag(SWEEP_RUN, sweep_run_id), RunTag(SWEEP_POINT, f"{label} · seed {seed}"[:5000])]
    if PARENT not in client.get_run(chain_run_id).data.tags:
        tags.append(RunTag(PARENT, sweep_run_id))
    client.log_batch(chain_run_id, tags=tags, synchronous=True)


def finish_sweep_run(uri: str, run_id: str, records: list[dict], title: str, failed: list[str]) -> None:
    """The summary on the sweep run; FINISHED, or FAILED with the failed chains' lines as kdchain.error."""
    client = MlflowClient(uri)
    if records:
        client.log_table(run_id, {k: [r.get(k) for r in records] for k in records[0]}, SUMMARY_JSON)
        columns = [(k, k) for k in records[0]]
        client.log_text(run_id, f"# {title}\n\n" + markdown_table([_shown(r) for r in records], columns), SUMMARY_MD)
    points = list(dict.fromkeys(r["grid point"] for r in records))  # in order: the step of each grid point
    ts = now_ms()
    metrics = [Metric(f"{key}.{r['generation']}", float(r[field]), ts, points.index(r["grid point"]))
               for r in records for key, field in (("test_accuracy_mean", "test_accuracy_mean"),
                                                   ("test_accuracy_std", "test_accuracy_std"), ("params", "params"))
               if r.get(field) is not None and r["generation"] != "-"]
    metrics.append(Metric("chains_failed", float(len(failed)), ts, 0))
    for chunk in chunks(metrics, 500):
        client.log_batch(run_id, metrics=chunk, synchronous=True)
    if failed:
        client.set_tag(run_id, "kdchain.error", "\n".join(failed)[:5000])
    client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def end_sweep_run(uri: str, run_id: str, status: str) -> None:
    """An interrupted or broken sweep: its run ends KILLED or FAILED, never RUNNING."""
    with contextlib.suppress(Exception):
        MlflowClient(uri).set_terminated(run_id, status=status)


def end_unfinished_chains(chains: list[tuple[str, str, str]], since_ms: int, status: str) -> int:
    """After an interrupted sweep, once its workers are gone: the chain runs it started (after `since_ms`) that
    are still RUNNING end `status` with their generation runs, never RUNNING. `chains` = [(tracking URI,
    experiment, chain digest)]. Running the same sweep again resumes them. Returns how many were ended."""
    ended = 0
    for uri, experiment, digest in chains:
        with contextlib.suppress(Exception):
            chain = chain_run_of(uri, experiment, digest)
            run = MlflowClient(uri).get_run(chain) if chain else None
            if run is not None and run.info.status == "RUNNING" and run.info.start_time >= since_ms:
                tracker = Tracker(uri, experiment, experiment_id=run.info.experiment_id)
                tracker.end_stale_runs(chain)
                tracker.finish_chain(chain, status=status)
                ended += 1
    return ended


def _shown(record: dict) -> dict:
    return {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in record.items()}
