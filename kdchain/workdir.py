"""What a chain's workdir holds: one folder per trained generation (`<chain>/<index>-<name>-<key[:12]>`), and which
of them the MLflow store still needs, for `kdchain runs` and `kdchain clean`.

A folder is needed while a finished chain run uses it (its own generation run or a reused one points at its
checkpoint), while a registered model version was made from it, or while a chain is running on it (its lock is
held). Everything else can go: a later run that needs it trains it again.
"""

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from kdchain.locks import chain_lock_path, generation_lock_path, is_held

FOLDER = re.compile(r"^(\d+)-(.+)-([0-9a-f]{12})$")
LEGACY_RESULTS = "prefect-results"  # Prefect task results of kdchain before reuse was decided by MLflow


@dataclass
class HeldGeneration:
    folder: Path
    chain: str  # the chain's name (the folder's parent)
    generation: str
    key12: str
    size: int  # bytes on disk
    modified: float  # time.time() of the newest file
    chain_runs: list[str] = field(default_factory=list)  # "<chain run name> <id[:8]> (STATUS[, reused])"
    registered: list[str] = field(default_factory=list)  # "name/version"
    reason: str = ""  # why it is kept; empty: unreferenced

    @property
    def age_s(self) -> float:
        return time.time() - self.modified


def _size_and_mtime(folder: Path) -> tuple[int, float]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), max((p.stat().st_mtime for p in files), default=folder.stat().st_mtime)


def generation_folder(workdir: str | Path, chain: str, index: int, name: str, key: str) -> Path:
    """Where the generation `index` (`name`) of `chain` trained under `key` keeps its checkpoint and resume state."""
    return Path(workdir) / chain / f"{index}-{name}-{key[:12]}"


def generation_folders(workdir: Path) -> list[HeldGeneration]:
    out = []
    for folder in sorted(Path(workdir).glob("*/*")):
        m = FOLDER.match(folder.name)
        if folder.is_dir() and m:
            size, modified = _size_and_mtime(folder)
            out.append(HeldGeneration(folder.resolve(), folder.parent.name, m.group(2), m.group(3), size, modified))
    return out


def _uses(ref: dict, held: HeldGeneration) -> bool:
    if ref["checkpoint"]:
        return Path(ref["checkpoint"]).parent == held.folder
    # a run recorded before checkpoints were tagged: its key and its chain's name
    return ref["key"][:12] == held.key12 and ref["run_name"].startswith(f"{held.chain} · ")


def _kept_chains(refs: list[dict], keep_last: int | None, locks: Path) -> set[str]:
    """Chain runs whose folders stay: every FINISHED one (or the `keep_last` newest per experiment), and every one
    a process is running now (its chain lock is held)."""
    finished: dict[str, dict[str, int]] = {}
    kept = set()
    for r in refs:
        if r["chain_status"] == "FINISHED":
            finished.setdefault(r["experiment_id"], {})[r["chain_run_id"]] = r["chain_started"]
        elif r["chain_digest"] and is_held(chain_lock_path(locks, r["chain_digest"])):
            kept.add(r["chain_run_id"])
    for runs in finished.values():
        newest = sorted(runs, key=runs.get, reverse=True)
        kept.update(newest if keep_last is None else newest[:keep_last])
    return kept


def judge(held: list[HeldGeneration], refs: list[dict], locks: Path, keep_last: int | None = None) -> None:
    """Fill in each folder's chain runs, registered versions and the reason it is kept (empty: it can go)."""
    kept = _kept_chains(refs, keep_last, locks)
    for h in held:
        users = [r for r in refs if _uses(r, h)]
        h.chain_runs = sorted({f"{r['chain_name']} {r['chain_run_id'][:8]} ({r['chain_status']}"
                               + (", reused" if r["reused_from"] else "") + ")" for r in users if r["chain_run_id"]})
        h.registered = sorted({v for r in users for v in r["registered"]})
        in_kept = any(r["chain_run_id"] in kept and r["status"] == "FINISHED" and not r["superseded"] for r in users)
        if h.registered:
            h.reason = "registered " + ", ".join(h.registered)
        elif is_held(generation_lock_path(locks, h.key12)):
            h.reason = "being trained now"
        elif in_kept:
            h.reason = "used by a kept chain run" if keep_last is not None else "used by a finished chain run"


def unreferenced_records(workdir: Path, held: list[HeldGeneration]) -> list[Path]:
    """Prefect result records under <workdir>/prefect-results whose generation no kept folder holds."""
    keep = {h.key12 for h in held if h.reason}
    folder = Path(workdir) / LEGACY_RESULTS
    return sorted(p for p in folder.glob("*") if p.is_file() and p.name[:12] not in keep) if folder.is_dir() else []


def delete(paths: list[Path]) -> None:
    for p in paths:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
