"""Models in the store as teachers: `models:/<name>@<alias>`, `models:/<name>/<version>` and `runs:/<id>` resolved
to the kdchain checkpoint behind them, downloaded once. A generation's checkpoint in the store is its logged model's
`data/model.pth` (kdchain.models.saved); runs logged before that also have a `checkpoint/model.pt` artifact."""

import os
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from kdchain.tracking.registry import alias_version
from kdchain.tracking.reuse import MODEL_URI


def _parse_model_uri(source: str) -> tuple[str, str | None, str | None]:
    """models:/<name>@<alias> | models:/<name>/<version> -> (name, alias, version)."""
    rest = source[len("models:/"):].strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, alias, None
    if "/" in rest:
        name, version = rest.rsplit("/", 1)
        return name, None, version
    raise CheckpointSourceError(f"teacher.from: {source!r}: expected models:/<name>@<alias> or models:/<name>/<version>")


class CheckpointSourceError(Exception):
    """A `teacher.from` URI that does not lead to a kdchain checkpoint; the message says why."""


def _store_holds_models(source: str, uri: str) -> None:
    """A store that does not exist yet holds no model: say so, and do not create it by looking."""
    from kdchain.tracking.store import store_exists

    if not store_exists(uri):
        raise CheckpointSourceError(f"teacher.from: {source}: the MLflow store {uri} does not exist yet, so it holds "
                                    "no model; train a chain into it first, or point tracking.uri (or "
                                    "--tracking-uri) at the store that holds the model")


def pin_model_uri(source: str, uri: str) -> str:
    """models:/<name>@<alias> -> models:/<name>/<version it points at now>."""
    name, alias, version = _parse_model_uri(source)
    if alias is None:
        return source
    _store_holds_models(source, uri)
    mv = alias_version(uri, name, alias)
    if mv is None:
        raise CheckpointSourceError(f"teacher.from: {source}: the model {name!r} has no alias {alias!r} in {uri} "
                                    "(no champion yet? train a teacher first, or run the retrain once)")
    return f"models:/{name}/{mv[0]}"


def fetch_checkpoint(source: str, uri: str, cache_dir: Path) -> Path:
    """The kdchain checkpoint (run_checkpoint) of the run behind a models:/ or runs:/ URI, downloaded
    once under `cache_dir`. A URI with an alias is resolved each time (it moves); versions and runs are immutable."""
    if source.startswith("models:/"):
        source = pin_model_uri(source, uri)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in source)
    target = Path(cache_dir) / safe / "model.pt"
    if target.is_file():
        return target
    _store_holds_models(source, uri)
    client = MlflowClient(uri)
    try:
        run_id = _source_run(client, source)
        _download_once(target, lambda tmp: run_checkpoint(client, uri, run_id, tmp))
    except mlflow.exceptions.MlflowException as e:
        raise CheckpointSourceError(f"teacher.from: {source}: cannot fetch its kdchain checkpoint from {uri} "
                                    f"({str(e).splitlines()[0][:200]}); only models that kdchain logged can be "
                                    "loaded this way") from None
    return target


def _source_run(client: MlflowClient, source: str) -> str:
    if source.startswith("models:/"):
        name, _, version = _parse_model_uri(source)
        return client.get_model_version(name, version).run_id
    return source[len("runs:/"):].strip("/").split("/")[0]  # runs:/<run_id>[/anything]: that run


def source_model_uri(source: str, uri: str) -> str | None:
    """The logged model (models:/<model_id>) behind a pinned models:/ or a runs:/ teacher, or None: a chain that
    loads it as its teacher points at it instead of logging its weights again."""
    client = MlflowClient(uri)
    try:
        return client.get_run(_source_run(client, source)).data.tags.get(MODEL_URI)
    except mlflow.exceptions.MlflowException:
        return None


def run_checkpoint(client: MlflowClient, uri: str, run_id: str, dest: str) -> str:
    """The kdchain checkpoint of a generation run, downloaded into the folder `dest`: the `checkpoint/model.pt`
    artifact of a run logged before the logged model held it, else the logged model's `data/model.pth`."""
    if "checkpoint/model.pt" in {f.path for f in client.list_artifacts(run_id, "checkpoint")}:
        return client.download_artifacts(run_id, "checkpoint/model.pt", dest)
    model_uri = client.get_run(run_id).data.tags.get(MODEL_URI, "")
    if not model_uri.startswith("models:/"):
        raise mlflow.exceptions.MlflowException(f"run {run_id} has no kdchain model (no tag {MODEL_URI})")
    location = client.get_logged_model(model_uri.removeprefix("models:/")).artifact_location.rstrip("/")
    return mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/data/model.pth", dst_path=dest,
                                               tracking_uri=uri)


def shipped_int8(uri: str, run_ref: str, dest: Path) -> Path | None:
    """The int8 ONNX file a generation run shipped (onnx/model.int8.onnx: PTQ, bounded or QAT), downloaded under
    `dest` once; None when the run logged none. `run_ref`: a run id or runs:/<id>."""
    run_id = run_ref.removeprefix("runs:/").split("/")[0]
    target = Path(dest) / f"int8-{run_id}" / "model.int8.onnx"
    if target.is_file():
        return target
    client = MlflowClient(uri)
    if "onnx/model.int8.onnx" not in {f.path for f in client.list_artifacts(run_id, "onnx")}:
        return None
    return _download_once(target, lambda tmp: client.download_artifacts(run_id, "onnx/model.int8.onnx", tmp))


def _download_once(target: Path, download) -> Path:
    """`download(folder)` (-> the file's path) into a temporary folder beside `target`, then moved there: the whole
    file or none (retrains may race here); no progress bar on stderr (one line or none)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        os.replace(download(tmp), target)
    return target
