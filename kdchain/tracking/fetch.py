"""Models in the store as teachers: `models:/<name>@<alias>`, `models:/<name>/<version>` and `runs:/<id>` resolved
to the kdchain checkpoint behind them, downloaded once."""

import os
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from kdchain.tracking.registry import alias_version


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


def pin_model_uri(source: str, uri: str) -> str:
    """models:/<name>@<alias> -> models:/<name>/<version it points at now>."""
    name, alias, version = _parse_model_uri(source)
    if alias is None:
        return source
    mv = alias_version(uri, name, alias)
    if mv is None:
        raise CheckpointSourceError(f"teacher.from: {source}: the model {name!r} has no alias {alias!r} in {uri} "
                                    "(no champion yet? train a teacher first, or run the retrain once)")
    return f"models:/{name}/{mv[0]}"


def fetch_checkpoint(source: str, uri: str, cache_dir: Path) -> Path:
    """The kdchain checkpoint (artifact checkpoint/model.pt) of the run behind a models:/ or runs:/ URI, downloaded
    once under `cache_dir`. A URI with an alias is resolved each time (it moves); versions and runs are immutable."""
    if source.startswith("models:/"):
        source = pin_model_uri(source, uri)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in source)
    target = Path(cache_dir) / safe / "model.pt"
    if target.is_file():
        return target
    client = MlflowClient(uri)
    try:
        if source.startswith("models:/"):
            name, _, version = _parse_model_uri(source)
            run_id = client.get_model_version(name, version).run_id
        else:  # runs:/<run_id>[/anything]: that run's checkpoint
            run_id = source[len("runs:/"):].strip("/").split("/")[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # whole file or none: retrains may race here
            os.replace(client.download_artifacts(run_id, "checkpoint/model.pt", tmp), target)
    except mlflow.exceptions.MlflowException as e:
        raise CheckpointSourceError(f"teacher.from: {source}: cannot fetch its kdchain checkpoint from {uri} "
                                    f"({str(e).splitlines()[0][:200]}); only models logged by kdchain can be teachers "
                                    "through `from`") from None
    return target
