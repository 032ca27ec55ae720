"""Finished generations found by their content, in any chain run of the store, and recorded again under a new
chain run without training: the reused generation's run copies the original's metrics (every step) and points at
its checkpoint and logged model.

A generation's cache key (kdchain.resolve.generation_key) covers all its weights depend on: its resolved spec, the
data and its fingerprint, the seed and its teachers' weights. The chain's name, experiment and later generations do
not change them, so a finished generation is looked up in every experiment of the store.
"""

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from kdchain.tracking.store import CACHE_KEY, CHAIN_DIGEST, KIND, PARENT, SUPERSEDED, TEACHER_RUN, chunks

CHECKPOINT, CHECKPOINT_DIGEST = "kdchain.checkpoint", "kdchain.checkpoint_digest"  # absolute path, sha256
MODEL_URI, REUSED_FROM = "kdchain.model_uri", "kdchain.reused_from"  # the logged model; the run that trained it
EPOCH_KEYS = ("train_loss",)  # with loss_*: per-epoch only, not a generation's final numbers


def finished_with_key(client: MlflowClient, key: str) -> list:
    """FINISHED, not superseded generation runs with this cache key that recorded their checkpoint, in every
    experiment of the store, newest first."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    runs = client.search_runs(experiments, f"tags.`{CACHE_KEY}` = '{key}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])
    return [r for r in runs if r.data.tags.get(KIND) == "generation" and SUPERSEDED not in r.data.tags
            and CHECKPOINT in r.data.tags and MODEL_URI in r.data.tags]


def run_status(client: MlflowClient, run_id: str) -> str | None:
    try:
        return client.get_run(run_id).info.status
    except Exception:  # deleted, or from another store
        return None


def run_parent(client: MlflowClient, run_id: str) -> str | None:
    try:
        return client.get_run(run_id).data.tags.get(PARENT)
    except Exception:
        return None


def final_metrics(run) -> dict[str, float]:
    """A generation run's latest value of each metric, per-epoch training losses left out."""
    return {k: v for k, v in run.data.metrics.items() if k not in EPOCH_KEYS and not k.startswith("loss_")}


def missing_at_step(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int) -> dict[str, float]:
    """The metrics not yet logged at `step`: a rerun after a kill between logging and FINISHED logs each once."""
    run = client.get_run(run_id)
    return {k: v for k, v in metrics.items()
            if k not in run.data.metrics or step not in {m.step for m in client.get_metric_history(run_id, k)}}


def record_reuse(client: MlflowClient, experiment_id: str, original, parent_id: str, run_name: str,
                 teacher_run_id: str | None) -> str:
    """A FINISHED generation run under `parent_id` that records `original` as reused: its tags, params, every step
    of every metric, and `kdchain.reused_from` = the run that trained it. Nothing is trained or copied on disk.
    `run_name` should say it was reused (the MLflow UI lists runs by name)."""
    source = original.data.tags.get(REUSED_FROM, original.info.run_id)
    tags = {k: v for k, v in original.data.tags.items()
            if k.startswith("kdchain.") and k not in (TEACHER_RUN, SUPERSEDED, "kdchain.error")}
    tags.update({PARENT: parent_id, REUSED_FROM: source,
                 "mlflow.note.content": original.data.tags.get("mlflow.note.content", "")})
    if teacher_run_id:
        tags[TEACHER_RUN] = teacher_run_id
    run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    params = [Param(k, v) for k, v in original.data.params.items()]
    metrics = [Metric(m.key, m.value, m.timestamp, m.step) for key in original.data.metrics
               for m in client.get_metric_history(original.info.run_id, key)]
    for chunk in chunks(params, 100):
        client.log_batch(run_id, params=chunk, synchronous=True)
    for chunk in chunks(metrics, 1000):
        client.log_batch(run_id, metrics=chunk, synchronous=True)
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def generation_runs(client: MlflowClient) -> list:
    """Every generation run of the store (all experiments), for `kdchain runs` and `kdchain clean`."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, f"tags.`{KIND}` = 'generation'") if experiments else []



def generation_references(client: MlflowClient) -> list[dict]:
    """One row per generation run of the store: where its checkpoint is, its chain run (name, status, start,
    digest) and the registered versions made from it; what `kdchain runs` and `kdchain clean` judge folders by."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    chains = {r.info.run_id: r for r in client.search_runs(experiments, f"tags.`{KIND}` = 'chain'")}
    registered: dict[str, list[str]] = {}
    for v in client.search_model_versions():
        registered.setdefault(v.run_id, []).append(f"{v.name}/{v.version}")
    rows = []
    for run in generation_runs(client):
        tags, chain = run.data.tags, chains.get(run.data.tags.get(PARENT))
        rows.append({"run_id": run.info.run_id, "run_name": run.info.run_name or "", "status": run.info.status,
                     "checkpoint": tags.get(CHECKPOINT), "key": tags.get(CACHE_KEY, ""),
                     "superseded": SUPERSEDED in tags, "reused_from": tags.get(REUSED_FROM),
                     "experiment_id": run.info.experiment_id, "chain_run_id": tags.get(PARENT),
                     "chain_name": chain.info.run_name if chain else None,
                     "chain_status": chain.info.status if chain else None,
                     "chain_started": chain.info.start_time if chain else 0,
                     "chain_digest": chain.data.tags.get(CHAIN_DIGEST) if chain else None,
                     "registered": registered.get(run.info.run_id, [])})
    return rows


def store_references(uri: str) -> list[dict]:
    """generation_references of the store at `uri`; [] when there is no store yet (creates nothing)."""
    from kdchain.tracking.store import store_exists

    return generation_references(MlflowClient(uri)) if store_exists(uri) else []
