"""The run layout, written: a chain run per chain, a generation run per generation (the teacher included), search
and trial runs nested under them, and reading that back as tables.

Runs are addressed by id through MlflowClient, never through the thread-local active run, so that a task running
in a worker thread or process logs to the right place.
"""

import contextlib
import io
import json
from datetime import datetime
from pathlib import Path

import mlflow
import torch
import torchvision
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

import kdchain
from kdchain.models import saved
from kdchain.spec import ChainSpec, flatten
from kdchain.tracking.labels import (REGISTERED_MODEL, chain_name, experiment_url, generation_name, run_url,
                                     version_description)
from kdchain.tracking.lineage import split_datasets
from kdchain.tracking.registry import FAMILY
from kdchain.tracking.report import ChainReport
from kdchain.tracking.search_runs import SearchRuns
from kdchain.tracking.tables import CLASS_NAMES, GenerationTables
from kdchain.tracking.reuse import MODEL_URI
from kdchain.tracking.store import (CACHE_KEY, CHAIN_DIGEST, DEFAULT_UI, GENERATION, GENERATION_NAME, KIND, PARENT,
                                    SUPERSEDED, TEACHER_RUN, chunks, now_ms, prepare_sqlite, sqlite_path, store_exists)

WARNING = "kdchain.warning"


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


class Tracker(ChainReport, SearchRuns, GenerationTables):
    def __init__(self, uri: str, experiment: str, experiment_id: str | None = None):
        self.uri = uri
        db = sqlite_path(uri)
        if db is not None and experiment_id is None:
            prepare_sqlite(db)
        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(uri)
        self.experiment_id = experiment_id or self._experiment(experiment, db)

    def _experiment(self, name: str, db: Path | None) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        # a local store keeps its artifacts beside the database
        location = (db.parent.resolve() / "artifacts").as_uri() if db is not None else None
        try:
            exp_id = self.client.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:  # created meanwhile by another process, or the store is read-only
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            exp_id = exp.experiment_id
        # the MLflow 3 UI then opens the experiment as model training, not GenAI
        self.client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
        return exp_id

    # ------------------------------------------------------------------------------------------ chain run

    def chain_run(self, spec: ChainSpec, digest: str, spec_yaml: str, fresh: bool = False,
                  marker: str = "") -> tuple[str, bool]:
        """(run id, resumed): the chain run of this exact spec if one exists (unless `fresh`), else a new one.
        `marker` (e.g. "retrain") goes into the run's name."""
        runs = [] if fresh else self.client.search_runs(
            [self.experiment_id], f"tags.`{KIND}` = 'chain' and tags.`{CHAIN_DIGEST}` = '{digest}'",
            order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            run_id = runs[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id, True
        name = chain_name(spec.name, spec.seed, digest, f"{datetime.now():%m-%d %H:%M}",
                          marker or ("fresh" if fresh else ""))
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={KIND: "chain", CHAIN_DIGEST: digest, "kdchain.chain": spec.name,
                                           "mlflow.note.content": f"kdchain chain {spec.name}: teacher → "
                                           + " → ".join(g.name for g in spec.generations)})
        run_id = run.info.run_id
        params = [Param(k, v[:6000]) for k, v in flatten(spec).items()]
        for chunk in chunks(params, 100):
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

    def finish_chain(self, run_id: str, status: str = "FINISHED", by_generation: list[dict] | None = None) -> None:
        """`by_generation`: each generation's final metrics, teacher first. They go on the chain run with step =
        generation index, so its charts read as a line from teacher to the last student."""
        if by_generation:
            ts = now_ms()
            metrics = [Metric(k, round(float(m[k]), 6), ts, step) for step, m in enumerate(by_generation)
                       for k in ("test_accuracy", "params", "latency_ms", "retention") if m.get(k) is not None]
            for chunk in chunks(metrics, 500):
                self.client.log_batch(run_id, metrics=chunk, synchronous=True)
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
        ts = now_ms()
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
                          checkpoint: str, tags: dict[str, str] | None = None, loaded: bool = False,
                          model_uri: str | None = None, data=None) -> str:
        """The model (loads back as its class; its weights file is the checkpoint), the final metrics and `tags`;
        returns the logged model's URI. `loaded`: a teacher loaded with `teacher.from`, whose checkpoint is the
        source's file (nothing beside it is its own); `model_uri`: that source's logged model in this store, pointed
        at instead of logging the weights again. The metrics are logged at step 0 (MLflow charts a metric with no
        later step as bars, not against epochs) and linked to the logged model (the experiment's Models tab lists it
        with them); the run is renamed to carry its key figures. Idempotent, for a rerun after a kill before
        FINISHED: a model the run already logged is not logged again. `data`: (the data spec, the seed), logged as the
        run's datasets (kdchain.tracking.lineage; a loaded teacher saw no training split). The model's `class_names` (kdchain.chain sets
        them) go into the logged model's metadata and the run's tag kdchain.class_names (a JSON list), which
        register() copies to the model version."""
        mlflow.flush_async_logging()
        generation = self.client.get_run(run_id).data.tags.get(GENERATION_NAME, "model")
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in generation)
        names = getattr(model, "class_names", None)
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in (tags or {}).items()]
                              + ([RunTag(CLASS_NAMES, json.dumps(names))] if names else []), synchronous=True)
        logged = [m for m in self.client.search_logged_models([self.experiment_id],
                                                               f"source_run_id = '{run_id}' AND name = '{safe}'")
                  if str(m.status).endswith("READY")]
        with mlflow.start_run(run_id=run_id, nested=True) as _, _requirements_taken_as_given():
            info = None if model_uri else logged[0] if logged else self._log_model(model, safe, checkpoint, names)
            if data is not None:
                mlflow.log_inputs(*split_datasets(*data, splits=("val", "test") if loaded else ("train", "val", "test")))
            onnx = Path(checkpoint).with_suffix(".onnx")  # beside the checkpoint with measure.keep_onnx
            for path in () if loaded else (onnx, onnx.with_suffix(".int8.onnx")):  # fp32; int8 with deploy.quantize
                if path.is_file():
                    mlflow.log_artifact(str(path), "onnx")
        model_uri = model_uri or info.model_uri
        ts = now_ms()
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0, model_id=info and info.model_id)
                                               for k, v in metrics.items()], synchronous=True)
        self.client.update_run(run_id, name=generation_name(generation, self.client.get_run(run_id).data.metrics))
        self.client.set_tag(run_id, MODEL_URI, model_uri)  # before FINISHED: a finished run always names its model
        self.client.set_terminated(run_id, status="FINISHED")
        return model_uri

    @staticmethod
    def _log_model(model: torch.nn.Module, name: str, checkpoint: str, class_names: list | None):
        """The logged model's model.pth is the kdchain checkpoint itself (kdchain.models.saved): it loads back as
        its class through mlflow.pytorch.load_model, and `teacher.from`, retrain and `kdchain export` read it with
        weights_only. The store holds the weights once; no separate checkpoint artifact."""
        model.__dict__[saved.CHECKPOINT_ATTR] = saved.read_checkpoint(Path(checkpoint), mmap=True)
        try:
            return mlflow.pytorch.log_model(
                model, name=name, serialization_format="pickle", pickle_module=saved,
                pip_requirements=_pip_requirements(), metadata={"class_names": class_names} if class_names else None,
                code_paths=[str(Path(kdchain.__file__).parent)])
        finally:
            model.__dict__.pop(saved.CHECKPOINT_ATTR, None)

    def log_skipped(self, run_id: str, skipped: list[str]) -> None:
        """The files the data source could not read, whole paths and why, one a line: data/skipped_files.txt."""
        self.client.log_text(run_id, "\n".join(skipped) + "\n", "data/skipped_files.txt")

    def warn(self, run_id: str, message: str) -> None:
        """A warning about a run that still finishes (e.g. its ONNX export left out), as the tag kdchain.warning."""
        self.client.set_tag(run_id, WARNING, message[:5000])

    def tag_run(self, run_id: str, tags: dict[str, str]) -> None:
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, v[:5000]) for k, v in tags.items()], synchronous=True)

    def fail_run(self, run_id: str, message: str, status: str = "FAILED") -> None:
        """End a run that did not finish: FAILED, or KILLED when interrupted (a rerun resumes it)."""
        with contextlib.suppress(Exception):
            mlflow.flush_async_logging()
            self.client.set_tag(run_id, "kdchain.error", message[:5000])
            self.client.set_terminated(run_id, status=status)

    def register(self, model_uri: str, name: str, chain_run_id: str, run_id: str, host: str = DEFAULT_UI,
                 family: dict[str, str] | None = None) -> str:
        """Registers the model once per generation run; `models:/<name>@latest` then resolves to the newest version
        (MLflow reserves the alias `latest` for exactly that). The version's description names the generation and
        its figures and links its runs; its metrics are those of the logged model it was registered from.
        `family`: {generation: runs:/<id>} of every generation of its chain, tagged on the version (a warm retrain
        starts from them; a rollback of the alias brings the whole family back)."""
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            existing = self.client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
            if existing:
                return max(existing, key=lambda v: int(v.version)).version
        tags = {"kdchain.chain_run_id": chain_run_id, **{f"{FAMILY}{k}": v for k, v in (family or {}).items()}}
        names = self.client.get_run(run_id).data.tags.get(CLASS_NAMES)
        if names:  # what each output means, on the version a deployment loads
            tags[CLASS_NAMES] = names
        with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints "Created version ..." itself
            version = mlflow.register_model(model_uri, name, tags=tags)
        run, chain = self.client.get_run(run_id), self.client.get_run(chain_run_id)
        self.client.set_tag(chain_run_id, REGISTERED_MODEL, name)
        self.client.update_model_version(name, version.version, description=version_description(
            run.data.tags.get(GENERATION_NAME, "?"), chain.info.run_name, run.data.metrics,
            self.run_url(run_id, host), self.run_url(chain_run_id, host)))
        return version.version

    def run_url(self, run_id: str, host: str = DEFAULT_UI) -> str:
        return run_url(host, self.experiment_id, run_id)

    def experiment_url(self, host: str = DEFAULT_UI, tab: str = "runs", query: str = "") -> str:
        """A tab of the experiment in the model-training workspace (not its GenAI overview)."""
        return experiment_url(host, self.experiment_id, tab, query)


def open_tracker(uri: str, experiment: str) -> Tracker | None:
    """A tracker on an existing experiment, or None; creates nothing."""
    if not store_exists(uri):
        return None
    exp = MlflowClient(uri).get_experiment_by_name(experiment)
    return Tracker(uri, experiment, experiment_id=exp.experiment_id) if exp else None
