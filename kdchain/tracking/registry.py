"""Registered models and their aliases: `champion` and `challenger` move by compare-and-set under a file lock;
a promotion decision is recorded on the chain run and on the model version."""

from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import RunTag

from kdchain.tracking.store import CHAIN_DIGEST, PARENT, sqlite_path

CHAMPION, CHALLENGER = "champion", "challenger"
FAMILY = "kdchain.family."  # + generation name, on a registered version: runs:/<id> of that generation's weights
VS_CHAMPION = "kdchain.promotion.vs_champion"  # on a retrained generation's run: how it compares with the champion's
CONFIG_DIGEST = "kdchain.retrain.config_digest"  # the config a retrain was given (a warm one trains another)


class AliasMoved(Exception):
    """The alias no longer points where the caller last saw it (another retrain promoted meanwhile)."""


def alias_version(uri: str, name: str, alias: str) -> tuple[str, str] | None:
    """(version, run id) of the model version an alias points at, or None (no such model or alias)."""
    try:
        mv = MlflowClient(uri).get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None
    return str(mv.version), mv.run_id


def champion_origin(uri: str, name: str) -> dict[str, str] | None:
    """What the champion was trained from, as its chain run recorded it: {version, chain_digest (the config),
    data_fingerprint (the data), test_accuracy}; None without a champion or a chain run behind it."""
    held = alias_version(uri, name, CHAMPION)
    client = MlflowClient(uri)
    parent = client.get_run(held[1]).data.tags.get(PARENT) if held and held[1] else None
    if not parent:
        return None
    tags = client.get_run(parent).data.tags
    return {"version": held[0], "chain_digest": tags.get(CONFIG_DIGEST) or tags.get(CHAIN_DIGEST, ""),
            "data_fingerprint": tags.get("kdchain.promotion.data_fingerprint", ""),
            "test_accuracy": client.get_run(held[1]).data.metrics.get("test_accuracy", float("nan"))}


def champion_family(uri: str, name: str) -> dict[str, str]:
    """{generation name: runs:/<id>} of the champion's whole family, teacher first, as registered with it; empty
    without a champion (or one registered before families were)."""
    held = alias_version(uri, name, CHAMPION)
    if held is None:
        return {}
    tags = MlflowClient(uri).get_model_version(name, held[0]).tags
    return {k[len(FAMILY):]: v for k, v in tags.items() if k.startswith(FAMILY)}


def _alias_lock(uri: str, name: str, lock_dir: Path) -> FileLock:
    # MLflow has no compare-and-set on aliases: every alias move of kdchain takes this lock, beside a local store or
    # in the chain's workdir (a path every worker reaches), re-reads the alias and only then sets it
    db = sqlite_path(uri)
    folder = db.parent if db is not None else Path(lock_dir)
    folder.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return FileLock(str(folder / f".kdchain-alias-{safe}.lock"), timeout=120)


def move_alias(uri: str, name: str, alias: str, version: str, expected: str | None, lock_dir: Path) -> None:
    """Point `alias` at `version` if it still points at `expected` (None: no holder yet); else raise AliasMoved."""
    client = MlflowClient(uri)
    with _alias_lock(uri, name, lock_dir):
        current = alias_version(uri, name, alias)
        current_version = current[0] if current is not None else None
        if current_version != expected:
            raise AliasMoved(f"{alias} of {name} is version {current_version}, not {expected} as compared against")
        _point(client, name, alias, version)


def set_alias(uri: str, name: str, alias: str, version: str, lock_dir: Path) -> None:
    with _alias_lock(uri, name, lock_dir):
        _point(MlflowClient(uri), name, alias, version)


def _point(client: MlflowClient, name: str, alias: str, version: str) -> None:
    """Set the alias; the champion is also written as a tag of the registered model: the models list shows only
    one alias per model (`@challenger: Version 5 +1` hides the champion) but shows every tag."""
    client.set_registered_model_alias(name, alias, version)
    if alias == CHAMPION:
        run_id = client.get_model_version(name, version).run_id
        accuracy = client.get_run(run_id).data.metrics.get("test_accuracy") if run_id else None
        shown = f"version {version}" + (f" · {accuracy:.1%}" if accuracy is not None else "")
        client.set_registered_model_tag(name, CHAMPION, shown)


def record_decision(uri: str, chain_run_id: str, name: str, version: str, tags: dict[str, str],
                    markdown: str) -> None:
    """The promotion decision on the chain run (tags + promotion.md) and on the model version (tags)."""
    client = MlflowClient(uri)
    client.log_batch(chain_run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()], synchronous=True)
    client.log_text(chain_run_id, markdown, "promotion.md")
    for k in ("kdchain.promotion.outcome", "kdchain.promotion.reason"):
        if k in tags:
            client.set_model_version_tag(name, version, k, str(tags[k])[:5000])
