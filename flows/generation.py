"""One generation as Prefect tasks: trained and recorded in its own MLflow run, or reused from a run that finished
under the same key. The chain flow (flows/chain.py) decides which, and passes small values between them.

A trained generation's end is a small transaction: the resume state of the last epoch stays until its run is
FINISHED, so whatever a kill interrupts after it (evaluation, profile, export, logging) is redone from the saved
weights with 0 epochs trained, and each metric step and the logged model are written once.
(No `from __future__ import annotations` here: Prefect reads the tasks' real annotations.)
"""

import os
import signal
import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal
from pydantic import BaseModel

from flows import progress
from kdchain.chain import train_generation
from kdchain.checkpoints import CheckpointError, is_model_uri, load_checkpoint
from kdchain.distill import StateUnreadable, load_train_state
from kdchain.models import describe
from kdchain.resolve import ResolvedGeneration, file_digest, resolve_chain
from kdchain.spec import ChainSpec
from kdchain.tracking import Tracker, source_model_uri
from kdchain.tracking.labels import rounded
from kdchain.tracking.reuse import (CHECKPOINT, CHECKPOINT_DIGEST, MODEL_URI, REUSED_FROM, final_metrics,
                                    finished_with_key, missing_at_step, record_reuse, run_parent, run_status)
from kdchain.tracking.store import PARENT, TEACHER_RUN


class GenerationResult(BaseModel):
    """What one generation hands to the next and to the table: small values only, never a model."""

    index: int
    name: str
    summary: str
    run_id: str
    checkpoint: str
    checkpoint_digest: str
    model_uri: str
    metrics: dict[str, float]
    seconds: dict[str, float] = {}
    reused_from: str | None = None  # the run that trained it, when this chain run reused it


@task(name="generation", task_run_name="{gen_name}", cache_policy=NO_CACHE)  # reuse is decided by `reusable`
def distill_generation(spec: ChainSpec, gen_name: str, index: int, teacher: GenerationResult | None,
                       teacher_accuracy: float | None, cache_key: str, out_dir: str, parent_run_id: str,
                       tracking_uri: str, extra_teachers: list[str] = [], fresh: bool = False) -> GenerationResult:
    """Train one generation and record it in its own MLflow run, nested under the chain run.
    `extra_teachers`: checkpoint paths of its other teachers (teachers: ancestors), oldest first."""
    tracker = Tracker(tracking_uri, spec.experiment_name())
    gen = resolve_chain(spec)[index]  # the flow checked the spec before any generation ran
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    saved = _resume_state(out, tracker, gen.name, fresh)
    epochs = _EpochLog(tracker, spec, gen, teacher, cache_key, parent_run_id, out, saved)
    progress.start(gen.name, gen.train.epochs)
    try:
        outcome, model = train_generation(spec, index, Path(teacher.checkpoint) if teacher else None, out,
                                          epochs.on_epoch, [Path(p) for p in extra_teachers])
    except BaseException as e:  # Ctrl-C included: the run must not stay RUNNING
        tracker.fail_run(epochs.run_id, f"{type(e).__name__}: {e}", "KILLED" if interrupted(e) else "FAILED")
        progress.stop(gen.name)
        raise
    progress.stop(gen.name)
    if outcome.teacher_outputs.startswith("stored views"):  # the FKD recipe: say where the outputs came from
        progress.note(f"{gen.name}: {outcome.teacher_outputs}")
    _test_kill_point(gen.name, "trained")
    t0 = time.perf_counter()
    result = _record(tracker, spec, epochs.run_id, outcome, model, teacher_accuracy, tracking_uri)
    _test_kill_point(gen.name, "recorded")
    (out / "train_state.pt").unlink(missing_ok=True)  # recorded: the resume state is no longer needed
    (out / "run_id").unlink(missing_ok=True)
    result.seconds["tracking"] = epochs.seconds + time.perf_counter() - t0
    return result


class _EpochLog:
    """Each epoch's losses and validation accuracy into the generation's MLflow run (the interrupted one when
    training resumes mid-way), and onto the progress bar."""

    def __init__(self, tracker: Tracker, spec: ChainSpec, gen: ResolvedGeneration, teacher, cache_key: str,
                 parent_run_id: str, out: Path, saved: dict | None):
        self.tracker, self.gen, self.out, self.saved, self.seconds = tracker, gen, out, saved, 0.0
        self.new_run = lambda: _generation_run(tracker, spec, gen, teacher, cache_key, parent_run_id, out)
        self.run_id = self.new_run()
        if saved is not None:
            tracker.backfill_epochs(self.run_id, {r["epoch"]: _epoch_metrics(r["train_loss"], r["val_accuracy"],
                                                                             r["parts"])
                                                  for r in saved.get("history", [])})
            progress.note(f"{gen.name}: resuming after epoch {saved['epoch']}/{gen.train.epochs} "
                          f"(MLflow run {self.run_id[:8]} continued)")

    def on_epoch(self, report) -> None:
        name = self.gen.name
        if self.saved is not None and report.epoch <= self.saved["epoch"]:
            # training dropped the state (saved beside other frozen weights): its epochs are trained again, in a
            # new run, so that the old run's history is not logged a second time
            progress.note(f"{name}: the resume state after epoch {self.saved['epoch']} does not fit the model any "
                          f"more; training {name} from epoch 1 in a new MLflow run")
            self.tracker.fail_run(self.run_id, "its resume state did not fit the model; trained again in a new run",
                                  "KILLED")
            self.saved = None
            (self.out / "run_id").unlink(missing_ok=True)  # a new run, though the state of this epoch is saved
            self.run_id = self.new_run()
        if report.epoch == report.epochs:  # its resume state has just been saved; nothing of it is logged yet
            _test_kill_point(name, "saved")
        t0 = time.perf_counter()
        self.tracker.log_epoch(self.run_id, report.epoch, _epoch_metrics(report.train_loss, report.val_accuracy,
                                                                         report.parts))
        self.seconds += time.perf_counter() - t0
        progress.epoch(name, report)


def _record(tracker: Tracker, spec: ChainSpec, run_id: str, outcome, model, teacher_accuracy: float | None,
            tracking_uri: str) -> GenerationResult:
    """The trained generation into its run: confusion, skipped files, warnings, tags, final metrics, the model;
    the run ends FINISHED."""
    name = outcome.name
    tracker.log_confusion(run_id, outcome.confusion, outcome.class_names, f"{spec.name} · {name}: test split")
    if outcome.skipped:  # the metric skipped_files counts them
        tracker.log_skipped(run_id, outcome.skipped)
    if outcome.candidates:  # a student sized by its target: the plans that met it, probed, the one chosen
        tracker.log_sizing(run_id, outcome.candidates, f"{spec.name} · {name}: plans that meet the target")
    if outcome.export_warning:  # the generation is kept; its run says why it has no ONNX file
        tracker.warn(run_id, outcome.export_warning)
        progress.note(f"{name}: warning: {outcome.export_warning}")
    # the run's description: the architecture that trained (a pruned plan said `depth 0.01`, it is `3 blocks removed`)
    tracker.tag_run(run_id, {**outcome.tags, "mlflow.note.content": outcome.arch_summary})
    metrics = {k: rounded(v) for k, v in outcome.metrics.items()}  # as the UI prints them: 0.9972, not 0.99722224
    metrics["retention"] = rounded(metrics["test_accuracy"] / teacher_accuracy if teacher_accuracy else 1.0)
    # each final metric once at step 0 (charts show them as bars, not against epochs), also on a rerun; the last
    # epoch's val_accuracy is already in the run's history at step=epochs
    final = missing_at_step(tracker.client, run_id, {k: v for k, v in metrics.items()
                                                      if not (k == "val_accuracy" and outcome.history)}, 0)
    checkpoint = Path(outcome.checkpoint).resolve()
    digest = file_digest(checkpoint)
    source = spec.teacher.from_ if outcome.index == 0 else None  # a teacher from this store is pointed at
    model_uri = tracker.finish_generation(run_id, final, model, str(checkpoint),
                                          tags={CHECKPOINT: str(checkpoint), CHECKPOINT_DIGEST: digest},
                                          loaded=source is not None, model_uri=source_model_uri(source, tracking_uri)
                                          if source and is_model_uri(source) else None, data=(spec.data, spec.seed))
    return GenerationResult(index=outcome.index, name=name, summary=outcome.arch_summary, run_id=run_id,
                            checkpoint=str(checkpoint), checkpoint_digest=digest, model_uri=model_uri,
                            metrics=metrics, seconds=dict(outcome.seconds))


@task(name="generation (reused)", task_run_name="{gen_name} (reused)", cache_policy=NO_CACHE)
def reuse_generation(gen_name: str, index: int, original_run_id: str, chain_name: str, experiment: str,
                     tracking_uri: str, parent_run_id: str, teacher_run_id: str | None) -> GenerationResult:
    """Record a generation finished in another chain run as this chain run's: a FINISHED run with
    kdchain.reused_from, its metrics copied, its checkpoint and model those of the original. Nothing is trained.
    A run of this very chain run is reused as it is, its teacher tag moved to `teacher_run_id`: the teacher may
    have been retrained since (its checkpoint was lost) into the same weights, and lineage names the run that
    holds the weights that taught it."""
    tracker = Tracker(tracking_uri, experiment)
    original = tracker.client.get_run(original_run_id)
    run_id = original_run_id
    if original.data.tags.get(PARENT) != parent_run_id:
        run_id = record_reuse(tracker.client, tracker.experiment_id, original, parent_run_id,
                              f"{chain_name} · {gen_name} (reused)", teacher_run_id)
    elif teacher_run_id and original.data.tags.get(TEACHER_RUN) != teacher_run_id:
        tracker.client.set_tag(run_id, TEACHER_RUN, teacher_run_id)
    return _result_of(tracker.client.get_run(run_id), index, gen_name)


def _result_of(run, index: int, name: str) -> GenerationResult:
    tags = run.data.tags
    return GenerationResult(index=index, name=name, summary=tags.get("mlflow.note.content", ""),
                            run_id=run.info.run_id, checkpoint=tags[CHECKPOINT],
                            checkpoint_digest=tags[CHECKPOINT_DIGEST], model_uri=tags[MODEL_URI],
                            metrics=final_metrics(run), reused_from=tags.get(REUSED_FROM, run.info.run_id))


def reusable(tracker: Tracker, key: str, chain_run_id: str, name: str):
    """The finished run of this key to reuse, this chain run's own first, whose checkpoint loads and still has the
    digest it was recorded with (a retrain in the same folder replaces it); None when there is none."""
    runs = sorted(finished_with_key(tracker.client, key),
                  key=lambda r: r.data.tags.get(PARENT) != chain_run_id)  # stable: newest first
    problem, digests = None, {}  # reused runs share their original's checkpoint: load and hash each file once
    for run in runs:
        path = Path(run.data.tags[CHECKPOINT])
        if path not in digests:
            try:
                load_checkpoint(path)
                digests[path] = file_digest(path)
            except CheckpointError as e:
                digests[path] = None
                problem = problem or str(e)
        if digests[path] is None:
            continue
        if digests[path] == run.data.tags[CHECKPOINT_DIGEST]:
            return run
        problem = problem or f"checkpoint {path} was replaced since run {run.info.run_id[:8]} recorded it"
    if problem:
        progress.note(f"{name}: {problem}; retraining {name}")
    return None


def _test_kill_point(gen_name: str, point: str) -> None:
    """For tests only: KDCHAIN_TEST_KILL_AT=<generation>:<saved|trained|recorded> ends this process there with
    SIGKILL, as a power cut would (saved: right after the last epoch's resume state is written);
    KDCHAIN_TEST_STALL_AT=<generation>:<point> stops it there until something kills it."""
    if os.environ.get("KDCHAIN_TEST_KILL_AT") == f"{gen_name}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("KDCHAIN_TEST_STALL_AT") == f"{gen_name}:{point}":
        progress.note(f"{gen_name}: stalled at {point} (KDCHAIN_TEST_STALL_AT)")
        while True:
            time.sleep(1)


def _resume_state(out: Path, tracker: Tracker, name: str, fresh: bool) -> dict | None:
    """The resume state in `out`, or None. A state whose run is already FINISHED (a kill between FINISHED and
    cleaning up) or one that `--fresh` retrains is dropped: training starts at epoch 1."""
    state, run_file = out / "train_state.pt", out / "run_id"
    if fresh or (run_file.is_file() and run_status(tracker.client, run_file.read_text().strip()) == "FINISHED"):
        state.unlink(missing_ok=True)
        run_file.unlink(missing_ok=True)
    try:
        return load_train_state(state)
    except StateUnreadable as e:  # cannot resume: start over in a new run (the old one is ended as KILLED)
        progress.note(f"{name}: {e}; training {name} from epoch 1")
        state.unlink()
        return None


def interrupted(e: BaseException) -> bool:
    """Ctrl-C, SIGTERM (inside a flow Prefect raises TerminationSignal for it) or a lost Prefect server
    (flows/signals.py): the runs end KILLED and a rerun resumes them."""
    return isinstance(e, (KeyboardInterrupt, TerminationSignal))


def _epoch_metrics(train_loss: float, val_accuracy: float, parts: dict[str, float]) -> dict[str, float]:
    return {"train_loss": train_loss, "val_accuracy": val_accuracy, **{f"loss_{k}": v for k, v in parts.items()}}


def _generation_run(tracker: Tracker, spec: ChainSpec, gen: ResolvedGeneration, teacher: GenerationResult | None,
                    cache_key: str, parent_run_id: str, out: Path) -> str:
    """The MLflow run of this generation: the interrupted one when training resumes mid-way, else a new one."""
    run_file = out / "run_id"
    if (out / "train_state.pt").is_file() and run_file.is_file():
        run_id = run_file.read_text().strip()
        # only a run of this chain run: a state left by another chain's killed process resumes in a new run
        if run_parent(tracker.client, run_id) == parent_run_id and tracker.reopen(run_id):
            return run_id
    run_id = tracker.generation_run(spec, parent_run_id, gen.index, gen.name, teacher.run_id if teacher else None,
                                    cache_key, gen.arch, describe(gen.arch))
    run_file.write_text(run_id)
    return run_id
