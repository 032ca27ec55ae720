"""What `kdchain export` reads from the store: a chain run's spec and, per finished generation, its table row and
its ONNX files (fp32, and int8 where the chain quantized), downloaded into a folder."""

from pathlib import Path

import mlflow

from kdchain.tracking.runs import open_tracker
from kdchain.tracking.store import experiment_of_run


class BundleSourceError(Exception):
    """The chain run cannot be exported; the message says why and what to do."""


def chain_sources(uri: str, chain_run_id: str, dest: Path) -> tuple[str, list[dict]]:
    """(the chain's spec.yaml text, one row per finished generation with its files under `dest`: row["onnx"] the
    fp32 file, row["onnx_int8"] the int8 file or None; a generation logged without ONNX (a teacher loaded with
    `from`) has row["onnx"] None and row["checkpoint"] its model.pt instead)."""
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
        where = str(dest / f"run-{row['run_id']}")
        if "model.onnx" not in names:
            checkpoints = {Path(f.path).name for f in tracker.client.list_artifacts(row["run_id"], "checkpoint")}
            if "model.pt" not in checkpoints:
                raise BundleSourceError(f"generation {row['name']} (run {row['run_id']}) has neither an ONNX file "
                                        "nor a checkpoint; rerun the chain with --fresh")
            row["onnx"] = row["onnx_int8"] = None
            row["checkpoint"] = mlflow.artifacts.download_artifacts(run_id=row["run_id"],
                                                                    artifact_path="checkpoint/model.pt",
                                                                    dst_path=where, tracking_uri=uri)
            continue
        folder = Path(mlflow.artifacts.download_artifacts(run_id=row["run_id"], artifact_path="onnx",
                                                          dst_path=where, tracking_uri=uri))
        row["onnx"] = str(folder / "model.onnx")
        row["onnx_int8"] = str(folder / "model.int8.onnx") if "model.int8.onnx" in names else None
    return spec_yaml, rows
