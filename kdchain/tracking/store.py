"""The MLflow store: where it is (URI resolution, the UI that shows it), creating it once, one-line errors when it
cannot be written, the tags of kdchain's run layout, and look-ups that create nothing.

Layout: one experiment per chain name; one parent run per chain (tag kdchain.kind=chain) and one nested run per
generation, the teacher included (kdchain.kind=generation, kdchain.generation = 0-based index).
"""

import fcntl
import os
import re
import threading
import time
from pathlib import Path

import mlflow
from mlflow import MlflowClient

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"
KIND, GENERATION, GENERATION_NAME = "kdchain.kind", "kdchain.generation", "kdchain.generation_name"
TEACHER_RUN, PARENT, CHAIN_DIGEST, CACHE_KEY = "kdchain.teacher_run_id", "mlflow.parentRunId", "kdchain.chain_digest", "kdchain.cache_key"
SEARCH_OF, TRIAL, WORKER, WINNER = "kdchain.search_of", "kdchain.trial", "kdchain.worker", "kdchain.search.winner"
SEARCH_RUN, CHOSEN = "kdchain.search_run_id", "kdchain.chosen_trial"  # on a searched generation's run
SUPERSEDED = "kdchain.superseded_by"  # a finished generation run that a retrain replaced: compare and caching skip it
DEFAULT_UI = "http://127.0.0.1:5000"  # where `kdchain ui` serves a local store
FINAL_KEYS = ["test_accuracy", "val_accuracy", "params", "flops", "latency_ms", "size_bytes", "retention",
              "teacher_agreement", "latency_ms_onnx", "throughput_ips", "throughput_ips_onnx"]
# a generation with deploy.quantize also has these (kdchain.measure.quantize); tables read both lists
INT8_KEYS = ["test_accuracy_int8", "latency_ms_int8", "throughput_ips_int8", "size_bytes_int8", "size_bytes_onnx",
             "int8_over_max_drop"]
TABLE_KEYS = FINAL_KEYS + INT8_KEYS


def resolve_uri(cli_uri: str | None = None, spec_uri: str | None = None) -> str:
    """--tracking-uri, then the spec's tracking.uri, then MLFLOW_TRACKING_URI, then the project's store."""
    return cli_uri or spec_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def ui_base(uri: str, configured: str | None = None) -> str:
    """The MLflow UI that shows this store: the configured URL, the tracking server itself, or `kdchain ui`'s."""
    if configured:
        return configured.rstrip("/")
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return DEFAULT_UI


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


class StoreError(Exception):
    """The store cannot be used; the message says what to change."""


# what SQLite (through SQLAlchemy and MLflow) says when it cannot write, and OS errors of a write
_STORE_WRITE_ERRORS = ("database or disk is full", "readonly database", "unable to open database file",
                       "disk I/O error", "No space left on device", "Read-only file system")


def as_store_error(e: BaseException, uri: str) -> StoreError | None:
    """A StoreError saying what to change when `e` is the store failing to write; None otherwise."""
    text = str(e)
    reason = next((r for r in _STORE_WRITE_ERRORS if r.lower() in text.lower()), None)
    db = sqlite_path(uri)
    if reason is None and isinstance(e, OSError) and e.strerror and e.filename and db is not None \
            and Path(os.path.abspath(e.filename)).is_relative_to(db.absolute().parent):  # not the workdir, not a pipe
        reason = e.strerror
    return None if reason is None else StoreError(cannot_write(uri, reason))


def cannot_write(uri: str, reason: str) -> str:
    return (f"cannot write the MLflow store {uri} ({reason}); free space there, make it writable, "
            "or point --tracking-uri / tracking.uri / MLFLOW_TRACKING_URI elsewhere")


_SCHEMES_HINT = "sqlite:///path/mlflow.db, http(s)://host:port (an MLflow server), or postgresql/mysql/mssql://..."
PROBE_SECONDS = 8.0  # the most a reachability check waits for a tracking server or database


def store_problem(uri: str) -> str | None:
    """Why a local SQLite store could not be written (checked without creating or changing anything), or None."""
    from kdchain.writable import unwritable_reason

    db = sqlite_path(uri)
    if db is None:
        return None
    if not db.exists():
        reason = unwritable_reason(db.parent)
        return cannot_write(uri, reason) if reason else None
    try:
        with open(db, "r+b"):
            return None
    except OSError as e:
        return cannot_write(uri, e.strerror or str(e))


def tracking_problem(uri: str) -> str | None:
    """Why MLflow could not use a tracking URI (an unknown scheme, a server or database that does not answer within
    PROBE_SECONDS, one that answers but is no MLflow), or None. A local SQLite file is store_problem's job."""
    if sqlite_path(uri) is not None:
        return None
    outcome: list = []

    def probe():
        try:
            MlflowClient(uri).search_experiments(max_results=1)
            outcome.append(None)
        except Exception as e:  # noqa: BLE001 -- every failure becomes the sentence below
            outcome.append(e)

    bounded = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(PROBE_SECONDS) - 2)}
    saved = {k: os.environ.get(k) for k in bounded}
    os.environ.update(bounded)
    try:
        thread = threading.Thread(target=probe, name="tracking-probe", daemon=True)
        thread.start()
        thread.join(PROBE_SECONDS)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if not outcome:
        return f"tracking URI {uri}: no answer within {PROBE_SECONDS:.0f} s; check the address and that the server runs"
    return None if outcome[0] is None else _describe_failure(uri, outcome[0])


def _describe_failure(uri: str, e: Exception) -> str:
    text = str(e)
    fix = "fix --tracking-uri / tracking.uri / MLFLOW_TRACKING_URI"
    if "unsupported URI" in text or "Could not find a registered" in text:
        scheme = uri.split(":", 1)[0] if ":" in uri else uri
        return f"tracking URI {uri}: MLflow knows no scheme {scheme!r}; use {_SCHEMES_HINT}"
    if "filesystem tracking backend" in text:
        return f"tracking URI {uri}: a folder of files, which MLflow 3 no longer writes; use {_SCHEMES_HINT}"
    if isinstance(e, ImportError):
        return f"tracking URI {uri} needs the Python package {e.name!r}: pip install it, or {fix}"
    errno_text = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno_text:
        return f"tracking server {uri} did not answer ({errno_text.group(1).strip()}); start it or {fix}"
    status = re.search(r"error code (\d+)", text)
    if status:
        return (f"tracking server {uri} answered HTTP {status.group(1)} to an MLflow API call: is it an MLflow "
                f"tracking server (and are MLFLOW_TRACKING_USERNAME/PASSWORD or TOKEN set)? Otherwise {fix}")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)[:200]
    return f"tracking URI {uri}: MLflow cannot use it ({first}); {fix}"


def chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def now_ms() -> int:
    return int(time.time() * 1000)


def prepare_sqlite(db: Path) -> None:
    """Create the store once, under a file lock: two processes racing to migrate a fresh DB collide."""
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        lock_path = db.parent / ".kdchain-store.lock"
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if db.is_file():  # an existing store must take writes too: SQLite opens a read-only file for reading
                open(db, "r+b").close()  # and fails only at the first write, after Prefect has started
            MlflowClient(f"sqlite:///{db}").search_experiments(max_results=1)  # runs the migrations
    except Exception as e:  # OSError making the folder; SQLite's own errors while migrating
        err = as_store_error(e, f"sqlite:///{db}")
        if err is None:
            raise
        raise err from None


def prepare_store(uri: str) -> None:
    """Create a local SQLite store (once, under a lock) or raise StoreError saying what to change."""
    db = sqlite_path(uri)
    if db is not None:
        prepare_sqlite(db)


def store_exists(uri: str) -> bool:
    db = sqlite_path(uri)
    return db is None or db.is_file()


def experiment_of_run(uri: str, run_id: str) -> str | None:
    """The experiment name of a run in the store, or None when there is no such run."""
    if not store_exists(uri):
        return None
    client = MlflowClient(uri)
    try:
        return client.get_experiment(client.get_run(run_id).info.experiment_id).name
    except mlflow.exceptions.MlflowException:
        return None


def latest_chain_run(uri: str, status: str | None = None):
    """The most recent kdchain chain run in the store (optionally of that status), or None; creates nothing."""
    if not store_exists(uri):
        return None
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    where = f"tags.`{KIND}` = 'chain'" + (f" and attributes.status = '{status}'" if status else "")
    runs = client.search_runs(ids, where, order_by=["attributes.start_time DESC"], max_results=1) if ids else []
    return runs[0] if runs else None


def latest_chain_experiment(uri: str) -> str | None:
    """The experiment of the most recent kdchain chain run in the store."""
    run = latest_chain_run(uri)
    return MlflowClient(uri).get_experiment(run.info.experiment_id).name if run else None
