"""Locks that keep two processes from doing the same work: one process per chain (store + workdir + config) and
one trainer per generation key.

OS file locks through `filelock` (flock on Linux): the kernel releases them when their process dies, `kill -9`
included, so a waiter takes over at once and finds the work undone. Prefect 3's transaction isolation
(`IsolationLevel.SERIALIZABLE` with `FileSystemLockManager`) marks a lock by a file holding the holder's name and
an optional expiry: a killed holder leaves it behind, and the waiter waits until the hold timeout (none by
default, and a training has no sensible bound), so it does not fit here.
"""

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

LOCKS = ".kdchain-locks"


def lock_folder(store_db: Path | None, workdir: str | Path) -> Path:
    """Beside a local MLflow store (every process using that store finds it), else in the workdir."""
    return (Path(store_db).resolve().parent if store_db is not None else Path(workdir).resolve()) / LOCKS


def chain_lock_path(folder: Path, chain_digest: str) -> Path:
    return folder / f"chain-{chain_digest[:16]}.lock"


def generation_lock_path(folder: Path, key: str) -> Path:
    return folder / f"generation-{key[:12]}.lock"  # 12 hex digits: the same prefix as the generation's folder


def holder(path: Path) -> str:
    """Who holds the lock at `path`, as its holder wrote it ("process 123 on host, since 01:02:03: chain x")."""
    try:
        return Path(f"{path}.holder").read_text().strip() or "another process"
    except OSError:
        return "another process"


@contextlib.contextmanager
def held(path: Path, label: str, on_wait: Callable[[str], None] = lambda text: None) -> Iterator[float]:
    """Hold the lock at `path` for the block; when another process holds it, say so through `on_wait` and wait
    for it. Yields the seconds waited."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    t0 = time.monotonic()
    try:
        lock.acquire(timeout=0)
    except Timeout:
        on_wait(holder(path))
        lock.acquire(poll_interval=0.2)
    try:
        Path(f"{path}.holder").write_text(f"process {os.getpid()} on {socket.gethostname()}, since "
                                          f"{time.strftime('%H:%M:%S')}: {label}\n")
        yield time.monotonic() - t0
    finally:
        lock.release()


def is_held(path: Path) -> bool:
    """True when a live process holds the lock at `path` right now (nothing is waited for)."""
    if not path.is_file():
        return False
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False
