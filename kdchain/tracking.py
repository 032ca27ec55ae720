"""MLflow: the only module that imports it.

Layout: one experiment per chain name; one parent run per chain (tag kdchain.kind=chain) and one nested run per
generation, the teacher included (kdchain.kind=generation, kdchain.generation = 0-based index). Runs are
addressed by id through MlflowClient, never through the thread-local active run, so that a task running in a
worker thread or process logs to the right place.
"""

import contextlib
import fcntl
import io
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path

import mlflow
import torch
from filelock import FileLock
import torchvision
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

import kdchain
from kdchain import plots
from kdchain.specs import ChainSpec, flatten

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"
KIND, GENERATION, GENERATION_NAME = "kdchain.kind", "kdchain.generation", "kdchain.generation_name"
TEACHER_RUN, PARENT, CHAIN_DIGEST, CACHE_KEY = "kdchain.teacher_run_id", "mlflow.parentRunId", "kdchain.chain_digest", "kdchain.cache_key"
SEARCH_OF, TRIAL, WORKER, WINNER = "kdchain.search_of", "kdchain.trial", "kdchain.worker", "kdchain.search.winner"
SEARCH_RUN, CHOSEN = "kdchain.search_run_id", "kdchain.chosen_trial"  # on a searched generation's run
SUPERSEDED = "kdchain.superseded_by"  # a finished generation run that a retrain replaced: compare and caching skip it
DEFAULT_UI = "http://127.0.0.1:5000"  # where `kdchain ui` serves a local store
PLOT_PARAMS, PLOT_LATENCY, PLOT_EPOCHS = ("plots/accuracy_vs_params.png", "plots/accuracy_vs_latency.png",
                                          "plots/val_accuracy_per_epoch.png")
PLOT_CONFUSION, TABLE_JSON, TABLE_MD = "plots/confusion_matrix.png", "generations.json", "generations.md"
FINAL_KEYS = ["test_accuracy", "val_accuracy", "params", "flops", "latency_ms", "size_bytes", "retention",
              "teacher_agreement", "latency_ms_onnx", "throughput_ips", "throughput_ips_onnx"]


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
    if reason is None and isinstance(e, OSError) and e.strerror:
        reason = e.strerror
    if reason is None:
        return None
    return StoreError(f"cannot write the MLflow store {uri} ({reason}); free space there, make it writable, "
                      "or point --tracking-uri / tracking.uri / MLFLOW_TRACKING_URI elsewhere")


def _pip_requirements() -> list[str]:
    # explicit, so that log_model does not spend seconds inferring them
    base = lambda v: v.split("+")[0]  # noqa: E731 - drop local build tags such as +cpu
    return [f"torch=={base(torch.__version__)}", f"torchvision=={base(torchvision.__version__)}"]


def _no_requirement_check(requirements: list[str]) -> None:
    return None


@contextlib.contextmanager
def _requirements_taken_as_given():
    """log_model checks its pip requirements against the installed packages, only to warn on a mismatch; the first
    check in a process maps every installed distribution's files to modules (1.6 s here, the largest single cost
    of tracking a chain). Ours are read from the installed versions (_pip_requirements), so the check cannot warn:
    skip it for this call. Where a future MLflow moves the check, nothing is skipped and nothing breaks. A second
    thread inside the same window leaves the restoring to the first, so the check always comes back."""
    import mlflow.utils.environment as environment

    check = getattr(environment, "warn_dependency_requirement_mismatches", None)
    if check is None or check is _no_requirement_check:
        yield
        return
    environment.warn_dependency_requirement_mismatches = _no_requirement_check
    try:
        yield
    finally:
        environment.warn_dependency_requirement_mismatches = check


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _now_ms() -> int:
    return int(time.time() * 1000)


class Tracker:
    def __init__(self, uri: str, experiment: str, experiment_id: str | None = None):
        self.uri = uri
        db = sqlite_path(uri)
        if db is not None and experiment_id is None:
            self._prepare_sqlite(db)
        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(uri)
        self.experiment_id = experiment_id or self._experiment(experiment, db)

    @staticmethod
    def _prepare_sqlite(db: Path) -> None:
        """Create the store once, under a file lock: two processes racing to migrate a fresh DB collide."""
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            lock_path = db.parent / ".kdchain-store.lock"
            with open(lock_path, "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                MlflowClient(f"sqlite:///{db}").search_experiments(max_results=1)  # runs the migrations
        except Exception as e:  # OSError making the folder; SQLite's own errors while migrating
            err = as_store_error(e, f"sqlite:///{db}")
            if err is None:
                raise
            raise err from None

    def _experiment(self, name: str, db: Path | None) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        # a local store keeps its artifacts beside the database
        location = (db.parent.resolve() / "artifacts").as_uri() if db is not None else None
        try:
            exp_id = self.client.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:  # created meanwhile by another process
            exp_id = self.client.get_experiment_by_name(name).experiment_id
        # the MLflow 3 UI then opens the experiment as model training, not GenAI
        self.client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
        return exp_id

    # ------------------------------------------------------------------------------------------ chain run

    def chain_run(self, spec: ChainSpec, digest: str, spec_yaml: str, fresh: bool = False) -> tuple[str, bool]:
        """(run id, resumed): the chain run of this exact spec if one exists (unless `fresh`), else a new one."""
        runs = [] if fresh else self.client.search_runs(
            [self.experiment_id], f"tags.`{KIND}` = 'chain' and tags.`{CHAIN_DIGEST}` = '{digest}'",
            order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            run_id = runs[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id, True
        name = f"{spec.name} {datetime.now():%Y-%m-%d %H:%M:%S}"
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={KIND: "chain", CHAIN_DIGEST: digest, "kdchain.chain": spec.name,
                                           "mlflow.note.content": f"kdchain chain {spec.name}: teacher → "
                                           + " → ".join(g.name for g in spec.generations)})
        run_id = run.info.run_id
        params = [Param(k, v[:6000]) for k, v in flatten(spec).items()]
        for chunk in _chunks(params, 100):
            self.client.log_batch(run_id, params=chunk, synchronous=True)
        self.client.log_text(run_id, spec_yaml, "spec.yaml")
        return run_id, False

    def end_stale_runs(self, parent_id: str) -> int:
        """Generation runs a killed process left RUNNING are ended as KILLED; returns how many."""
        stale = self.client.search_runs([self.experiment_id],
                                        f"tags.`{PARENT}` = '{parent_id}' and attributes.status = 'RUNNING'")
        for run in stale:
            self.client.set_terminated(run.info.run_id, status="KILLED")
        return len(stale)

    def reopen(self, run_id: str) -> bool:
        """Continue an interrupted generation run; False when it is gone or already finished."""
        try:
            run = self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            return False
        if run.info.status == "FINISHED" or run.info.lifecycle_stage != "active":
            return False
        self.client.update_run(run_id, status="RUNNING")
        return True

    def finished_generation(self, parent_id: str, cache_key: str) -> str | None:
        runs = self._finished_children(parent_id, f" and tags.`{CACHE_KEY}` = '{cache_key}'")
        return runs[0].info.run_id if runs else None

    def finish_chain(self, run_id: str, status: str = "FINISHED", metrics: dict | None = None) -> None:
        if metrics:
            ts = _now_ms()
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
                                  synchronous=True)
        self.client.set_terminated(run_id, status=status)

    # ------------------------------------------------------------------------------------------ generation runs

    def generation_run(self, spec: ChainSpec, parent_id: str, index: int, name: str, teacher_run_id: str | None,
                       cache_key: str, arch, summary: str) -> str:
        tags = {KIND: "generation", GENERATION: str(index), GENERATION_NAME: name, PARENT: parent_id,
                CACHE_KEY: cache_key, "mlflow.note.content": summary}
        if teacher_run_id:
            tags[TEACHER_RUN] = teacher_run_id
        run = self.client.create_run(self.experiment_id, run_name=f"{spec.name} · {name}", tags=tags)
        params = [Param(k, v[:6000]) for k, v in flatten(arch, "student.").items()]
        self.client.log_batch(run.info.run_id, params=params, synchronous=True)
        return run.info.run_id

    def log_epoch(self, run_id: str, epoch: int, values: dict[str, float]) -> None:
        """One call per epoch, written before training goes on (a few ms): a `kill -9` must not lose epochs
        that the resume state already counts as done."""
        ts = _now_ms()
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, epoch) for k, v in values.items()],
                              synchronous=True)

    def backfill_epochs(self, run_id: str, epochs: dict[int, dict[str, float]]) -> list[int]:
        """Log the epochs of `epochs` ({epoch: metrics}) whose train_loss step the run lacks: a process killed
        between saving its resume state and logging the epoch. Returns the epochs logged."""
        have = {m.step for m in self.client.get_metric_history(run_id, "train_loss")}
        missing = sorted(e for e in epochs if e not in have)
        for epoch in missing:
            self.log_epoch(run_id, epoch, epochs[epoch])
        return missing

    def supersede(self, parent_id: str, index: int, keep_run_id: str) -> list[str]:
        """Mark the other finished runs of generation `index` under this chain run as replaced by `keep_run_id`,
        so that each generation appears once as finished. Returns the runs marked."""
        marked = []
        for run in self._finished_children(parent_id):
            if run.info.run_id != keep_run_id and run.data.tags.get(GENERATION) == str(index):
                self.client.set_tag(run.info.run_id, SUPERSEDED, keep_run_id)
                marked.append(run.info.run_id)
        return marked

    def _finished_children(self, parent_id: str, extra: str = "") -> list:
        runs = self.client.search_runs([self.experiment_id],
                                       f"tags.`{PARENT}` = '{parent_id}' and attributes.status = 'FINISHED'{extra}",
                                       order_by=["attributes.start_time DESC"])
        return [r for r in runs if SUPERSEDED not in r.data.tags]

    def finish_generation(self, run_id: str, metrics: dict[str, float], model: torch.nn.Module,
                          checkpoint: str, step: int = 0) -> str:
        """Final metrics, the model (loads back as its class), the checkpoint; returns the logged model's URI."""
        mlflow.flush_async_logging()
        ts = _now_ms()
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()],
                              synchronous=True)
        with mlflow.start_run(run_id=run_id, nested=True) as _, _requirements_taken_as_given():
            info = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle",
                                            pip_requirements=_pip_requirements(),
                                            code_paths=[str(Path(kdchain.__file__).parent)])
            mlflow.log_artifact(checkpoint, "checkpoint")
            onnx = Path(checkpoint).with_suffix(".onnx")  # written beside the checkpoint by kdchain.export
            if onnx.is_file():
                mlflow.log_artifact(str(onnx), "onnx")
        self.client.set_terminated(run_id, status="FINISHED")
        return info.model_uri

    def fail_run(self, run_id: str, message: str) -> None:
        with contextlib.suppress(Exception):
            mlflow.flush_async_logging()
            self.client.set_tag(run_id, "kdchain.error", message[:5000])
            self.client.set_terminated(run_id, status="FAILED")

    def register(self, model_uri: str, name: str, chain_run_id: str, run_id: str) -> str:
        """Registers the model once per generation run; `models:/<name>@latest` then resolves to the newest version
        (MLflow reserves the alias `latest` for exactly that)."""
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            existing = self.client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
            if existing:
                return max(existing, key=lambda v: int(v.version)).version
        with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints "Created version ..." itself
            version = mlflow.register_model(model_uri, name, tags={"kdchain.chain_run_id": chain_run_id})
        return version.version

    # ------------------------------------------------------------------------------------------ searches

    def search_run(self, chain_name: str, parent_id: str, index: int, name: str, search_json: str) -> str:
        """The run of one generation's search, nested under the chain run; its trials nest under it. It has no
        kdchain.generation tag: compare and the cache see only the generation's own run."""
        run = self.client.create_run(self.experiment_id, run_name=f"{chain_name} · {name} · search",
                                     tags={KIND: "search", SEARCH_OF: str(index), GENERATION_NAME: name,
                                           PARENT: parent_id})
        self.client.log_text(run.info.run_id, search_json, "search.json")
        return run.info.run_id

    def trial_run(self, search_run_id: str, chain_name: str, name: str, number: int, params: dict, summary: str,
                  worker: str) -> str:
        run = self.client.create_run(self.experiment_id, run_name=f"{chain_name} · {name} · trial {number}",
                                     tags={KIND: "trial", PARENT: search_run_id, TRIAL: str(number),
                                           WORKER: worker, "mlflow.note.content": summary})
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()],
                              synchronous=True)
        return run.info.run_id

    def finish_trial(self, run_id: str, metrics: dict[str, float], state: str, step: int) -> None:
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), _now_ms(), step) for k, v in metrics.items()],
                              tags=[RunTag("kdchain.trial_state", state)], synchronous=True)
        self.client.set_terminated(run_id, status="FINISHED")

    def finish_search(self, run_id: str, winner: int, winner_run_id: str | None, reason: str, plot: str | None,
                      result_json: str) -> None:
        tags = [RunTag(WINNER, str(winner)), RunTag("kdchain.search.reason", reason[:5000])]
        if winner_run_id:
            self.client.set_tag(winner_run_id, "kdchain.chosen", "true")
        self.client.log_batch(run_id, tags=tags, synchronous=True)
        self.client.log_text(run_id, result_json, "search_result.json")
        if plot:
            self.client.log_artifact(run_id, plot)
        self.client.set_terminated(run_id, status="FINISHED")

    def mark_searched(self, generation_run_id: str, search_run_id: str, label: str) -> None:
        """On the generation's run: which search and which trial chose its student (compare shows it)."""
        self.client.log_batch(generation_run_id, tags=[RunTag(SEARCH_RUN, search_run_id), RunTag(CHOSEN, label)],
                              synchronous=True)

    # ------------------------------------------------------------------------------------------ reading back

    def chain_runs(self) -> list:
        return self.client.search_runs([self.experiment_id], f"tags.`{KIND}` = 'chain'",
                                       order_by=["attributes.start_time DESC"])

    def generation_table(self, chain_run_id: str | None = None) -> tuple[str | None, list[dict]]:
        """(chain run id, one row per finished generation in order) of the given or the latest chain run."""
        if chain_run_id is None:
            runs = self.chain_runs()
            if not runs:
                return None, []
            chain_run_id = runs[0].info.run_id
        children = self._finished_children(chain_run_id)
        rows = {}
        for run in children:
            index = int(run.data.tags.get(GENERATION, -1))
            if index < 0 or index in rows:
                continue
            rows[index] = {"generation": index, "name": run.data.tags.get(GENERATION_NAME),
                           "run_id": run.info.run_id, "summary": run.data.tags.get("mlflow.note.content", ""),
                           **{k: run.data.metrics.get(k) for k in FINAL_KEYS}}
            if CHOSEN in run.data.tags:  # a searched generation: compare says which trial was chosen
                rows[index]["note"] = run.data.tags[CHOSEN]
        return chain_run_id, [rows[i] for i in sorted(rows)]

    def chain_summaries(self) -> list[dict]:
        """Every chain run of the experiment, newest first, with its final (last finished) student's metrics."""
        out = []
        for run in self.chain_runs():
            _, rows = self.generation_table(run.info.run_id)
            final = rows[-1] if rows else {}
            out.append({"chain_run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
                        "started": datetime.fromtimestamp(run.info.start_time / 1000).isoformat(timespec="seconds"),
                        "generations": len(rows), "teacher_test_accuracy": rows[0]["test_accuracy"] if rows else None,
                        "final": final.get("name"), "final_summary": final.get("summary"),
                        "final_run_id": final.get("run_id"), **{k: final.get(k) for k in FINAL_KEYS}})
        return out

    def chain_run_exists(self, run_id: str) -> bool:
        try:
            run = self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            return False
        return run.info.experiment_id == self.experiment_id and run.data.tags.get(KIND) == "chain"

    def run_url(self, run_id: str, host: str = DEFAULT_UI) -> str:
        return f"{host}/#/experiments/{self.experiment_id}/runs/{run_id}"

    def experiment_url(self, host: str = DEFAULT_UI) -> str:
        """The experiment's runs page (not its GenAI overview)."""
        return f"{host}/#/experiments/{self.experiment_id}/runs"

    # ------------------------------------------------------------------------------------------ pictures, tables

    def log_confusion(self, run_id: str, matrix: list[list[int]], class_names: list[str], title: str) -> None:
        """The generation's test confusion matrix as a PNG on its run."""
        if matrix:
            self.client.log_figure(run_id, plots.confusion_matrix(matrix, class_names, title), PLOT_CONFUSION)

    def val_histories(self, rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
        """name -> [(epoch, val accuracy)] read back from MLflow (epochs are steps >= 1; step 0 is the final value)."""
        return {r["name"]: [(m.step, m.value) for m in self.client.get_metric_history(r["run_id"], "val_accuracy")
                            if m.step >= 1] for r in rows}

    def log_chain_report(self, chain_run_id: str, chain_name: str, host: str = DEFAULT_UI) -> list[dict]:
        """On the chain run: accuracy-vs-params/latency and val-accuracy-per-epoch plots, the generation table as an
        MLflow table (generations.json) and as markdown (generations.md). Returns the table's rows."""
        _, rows = self.generation_table(chain_run_id)
        self.client.log_figure(chain_run_id, plots.accuracy_vs(rows, "params", "parameters",
                                                               f"{chain_name}: test accuracy vs parameters"), PLOT_PARAMS)
        self.client.log_figure(chain_run_id, plots.accuracy_vs(rows, "latency_ms", "latency per image (ms)",
                                                               f"{chain_name}: test accuracy vs latency"), PLOT_LATENCY)
        self.client.log_figure(chain_run_id, plots.val_accuracy_curves(self.val_histories(rows),
                                                                       f"{chain_name}: validation accuracy per epoch"),
                               PLOT_EPOCHS)
        table = [{"generation": r["name"], "architecture": r["summary"],
                  **{k: r[k] for k in FINAL_KEYS if r.get(k) is not None},
                  "run_id": r["run_id"], "mlflow_run": self.run_url(r["run_id"], host)} for r in rows]
        # log_table appends to an existing file: a re-run of the same chain run replaces it instead
        with contextlib.suppress(Exception):
            if any(f.path == TABLE_JSON for f in self.client.list_artifacts(chain_run_id)):
                from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

                get_artifact_repository(self.client.get_run(chain_run_id).info.artifact_uri).delete_artifacts(TABLE_JSON)
        if table:
            self.client.log_table(chain_run_id, {k: [t.get(k) for t in table] for k in table[0]}, TABLE_JSON)
        md = [{**t, "generation": f"[{t['generation']}]({t['mlflow_run']})",
               **{k: f"{t[k]:.4g}" for k in FINAL_KEYS if k in t}} for t in table]
        self.client.log_text(chain_run_id, f"# {chain_name}: generations\n\n" + plots.markdown_table(
            md, [("generation", "generation"), ("architecture", "architecture")] +
            [(k, k) for k in FINAL_KEYS]), TABLE_MD)
        return rows


def prepare_store(uri: str) -> None:
    """Create a local SQLite store (once, under a lock) or raise StoreError saying what to change."""
    db = sqlite_path(uri)
    if db is not None:
        Tracker._prepare_sqlite(db)
# ---------------------------------------------------------------------------------------------- registry aliases

CHAMPION, CHALLENGER = "champion", "challenger"


class AliasMoved(Exception):
    """The alias no longer points where the caller last saw it (another retrain promoted meanwhile)."""


def alias_version(uri: str, name: str, alias: str) -> tuple[str, str] | None:
    """(version, run id) of the model version an alias points at, or None (no such model or alias)."""
    try:
        mv = MlflowClient(uri).get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None
    return str(mv.version), mv.run_id


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
        client.set_registered_model_alias(name, alias, version)


def set_alias(uri: str, name: str, alias: str, version: str, lock_dir: Path) -> None:
    with _alias_lock(uri, name, lock_dir):
        MlflowClient(uri).set_registered_model_alias(name, alias, version)


def record_decision(uri: str, chain_run_id: str, name: str, version: str, tags: dict[str, str],
                    markdown: str) -> None:
    """The promotion decision on the chain run (tags + promotion.md) and on the model version (tags)."""
    client = MlflowClient(uri)
    client.log_batch(chain_run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()], synchronous=True)
    client.log_text(chain_run_id, markdown, "promotion.md")
    for k in ("kdchain.promotion.outcome", "kdchain.promotion.reason"):
        if k in tags:
            client.set_model_version_tag(name, version, k, str(tags[k])[:5000])


# ---------------------------------------------------------------------------------------------- models as teachers


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


def _store_exists(uri: str) -> bool:
    db = sqlite_path(uri)
    return db is None or db.is_file()


def open_tracker(uri: str, experiment: str) -> Tracker | None:
    """A tracker on an existing experiment, or None; creates nothing."""
    if not _store_exists(uri):
        return None
    exp = MlflowClient(uri).get_experiment_by_name(experiment)
    return Tracker(uri, experiment, experiment_id=exp.experiment_id) if exp else None


def experiment_of_run(uri: str, run_id: str) -> str | None:
    """The experiment name of a run in the store, or None when there is no such run."""
    if not _store_exists(uri):
        return None
    client = MlflowClient(uri)
    try:
        return client.get_experiment(client.get_run(run_id).info.experiment_id).name
    except mlflow.exceptions.MlflowException:
        return None


def latest_chain_experiment(uri: str) -> str | None:
    """The experiment of the most recent kdchain chain run in the store."""
    if not _store_exists(uri):
        return None
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, f"tags.`{KIND}` = 'chain'", order_by=["attributes.start_time DESC"],
                              max_results=1) if ids else []
    return client.get_experiment(runs[0].info.experiment_id).name if runs else None
