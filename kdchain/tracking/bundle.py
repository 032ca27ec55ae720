"""What `kdchain export` reads from the store: a chain run's spec and, per finished generation, its table row and
its ONNX files (fp32, and int8 where the chain quantized), downloaded into a folder."""

from pathlib import Path

import mlflow

from kdchain.tracking.fetch import run_checkpoint
from kdchain.tracking.runs import open_tracker
from kdchain.tracking.store import experiment_of_run


class BundleSourceError(Exception):
    """The chain run cannot be exported; the message says why and what to do."""


def chain_sources(uri: str, chain_run_id: str, dest: Path) -> tuple[str, list[dict]]:
    """(the chain's spec.yaml text, one row per finished generation with its files under `dest`: row["onnx"] the
    fp32 file, row["onnx_int8"] the int8 file, each None where the run did not log it, row["int8_float_nodes"]; a generation logged without
    its fp32 ONNX (measure.keep_onnx false, a teacher loaded with `from`) has row["checkpoint"], its weights)."""
    experiment = experiment_of_run(uri, chain_run_id)
    tracker = open_tracker(uri, experiment) if experiment else None
    if tracker is None or not tracker.chain_run_exists(chain_run_id):
        raise BundleSourceError(f"{chain_run_id} is not a chain run in {uri}; `kdchain compare --all` lists them")
    _, rows = tracker.generation_table(chain_run_id)
    if not rows:
        raise BundleSourceError(f"chain run {chain_run_id} has no finished generation; run the chain first")
    spec_yaml = mlflow.artifacts.load_text(f"runs:/{chain_run_id}/spec.yaml")
    for row in rows:
        names = {Path(f.path).name for f in tracker.client.list_artifacts(row["run_id"], "onnx")}
        where = dest / f"run-{row['run_id']}"
        row["onnx"], row["onnx_int8"] = (_download(uri, row["run_id"], f"onnx/{name}", where) if name in names
                                         else None for name in ("model.onnx", "model.int8.onnx"))
        float_nodes = tracker.client.get_run(row["run_id"]).data.tags.get("kdchain.int8.float_nodes", "")
        row["int8_float_nodes"] = [n for n in float_nodes.split(", ") if n]  # kept float32 to hold max_drop
        if row["onnx"] is None:  # ONNX not kept (measure.keep_onnx false) or not made: exported from the weights
            where.mkdir(parents=True, exist_ok=True)
            try:
                row["checkpoint"] = run_checkpoint(tracker.client, uri, row["run_id"], str(where))
            except mlflow.exceptions.MlflowException:
                raise BundleSourceError(f"generation {row['name']} (run {row['run_id']}) has neither an ONNX file "
                                        "nor a checkpoint; rerun the chain with --fresh") from None
    return spec_yaml, rows


def _download(uri: str, run_id: str, path: str, dest: Path) -> str:
    return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dest),
                                               tracking_uri=uri)
