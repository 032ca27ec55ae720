"""`kdchain sweep`: a grid x seeds of chains at once on a local Dask cluster, each its own FINISHED chain run, the
summary (mean ± std per grid point and generation) printed and on a parent sweep run; bad grid keys refused."""

import contextlib
import io
import json
import os
import statistics
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, tiny_chain, write_config


def _one_student(tmp_path, name: str) -> dict:
    return tiny_chain(tmp_path, name=name, generations=[{"name": "A", "student": {"derive": {"width": 0.5}},
                                                         "train": {"epochs": 1}}],
                      measure={"onnx": False, "speed": False})


@pytest.mark.slow  # about 55 s of CPU: 4 chains on a 2-worker Dask cluster and a temporary Prefect server
def test_sweep_of_two_values_and_two_seeds_on_a_local_dask_cluster(tmp_path):
    """No PREFECT_API_URL and no kept server: the command's temporary Prefect server serves the Dask workers."""
    cfg = _one_student(tmp_path, "swept")
    path = write_config(tmp_path, cfg)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "sweep", str(path), "--set-grid",
                           "generations.A.train.epochs=1,2", "--seeds", "0", "1", "--runner", "dask", "--workers", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr

    client = MlflowClient(cfg["tracking"]["uri"])
    exp = client.get_experiment_by_name("swept").experiment_id
    sweep, = client.search_runs([exp], "tags.`kdchain.kind` = 'sweep'")
    chains = client.search_runs([exp], "tags.`kdchain.kind` = 'chain'")
    assert sorted(c.data.tags["kdchain.sweep_point"] for c in chains) == [
        f"generations.A.train.epochs={e} · seed {s}" for e in (1, 2) for s in (0, 1)]
    assert all(c.info.status == "FINISHED" for c in chains) and sweep.info.status == "FINISHED"
    assert {c.data.tags["kdchain.sweep_run_id"] for c in chains} == {sweep.info.run_id}
    assert {c.data.tags["mlflow.parentRunId"] for c in chains} == {sweep.info.run_id}  # folded under it in the UI
    assert all(c.data.tags["kdchain.sweep_point"].split(" · ")[0] in c.info.run_name for c in chains)

    # the summary on the sweep run is the chains' own figures, averaged over the seeds
    table = json.loads(open(client.download_artifacts(sweep.info.run_id, "sweep.json", str(tmp_path))).read())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert [(r["grid point"], r["generation"]) for r in rows] == [
        (f"generations.A.train.epochs={e}", g) for e in (1, 2) for g in ("teacher", "A")]
    for row in rows:
        accs = [client.get_run(g.info.run_id).data.metrics["test_accuracy"]
                for c in chains if c.data.tags["kdchain.sweep_point"].startswith(row["grid point"] + " ")
                for g in client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{c.info.run_id}' and "
                                                   f"tags.`kdchain.generation_name` = '{row['generation']}'")]
        assert len(accs) == 2 and row["chains"] == "2/2" and row["status"] == "ok"
        assert abs(row["test_accuracy_mean"] - statistics.mean(accs)) < 1e-3
        assert abs(row["test_accuracy_std"] - statistics.stdev(accs)) < 1e-3
    assert all(r["test_accuracy_mean"] > 0.2 for r in rows if r["generation"] == "teacher")  # learned: chance is 0.1
    steps = client.get_metric_history(sweep.info.run_id, "test_accuracy_mean.A")
    assert sorted(m.step for m in steps) == [0, 1]  # one point per grid point: a chart across the grid

    # printed: one line per chain as it ends, then the mean ± std table
    assert proc.stdout.count(" · seed ") >= 4 and "test acc % (mean ± std)" in proc.stdout
    a_two = next(r for r in rows if r["grid point"].endswith("=2") and r["generation"] == "A")
    assert f"{a_two['test_accuracy_mean'] * 100:.2f} ± {a_two['test_accuracy_std'] * 100:.2f}" in proc.stdout

    # the sweep run is not a chain: compare and the chain look-ups see the four chains only
    from kdchain.tracking import Tracker

    assert len(Tracker(cfg["tracking"]["uri"], "swept").chain_summaries()) == 4


def test_bad_grid_key_or_value_is_one_line_before_anything_runs(tmp_path):
    from flows.cli import main

    path = write_config(tmp_path, _one_student(tmp_path, "refused"))
    for grid, expected in (("generations.A.train.epoch=1,2", "--set-grid generations.A.train.epoch: "
                                                             f"{path}: generations.0.train.epoch: unknown key"),
                           ("generations.A.train.epochs=1,x", "--set-grid generations.A.train.epochs=x: "),
                           ("generations.D.train.epochs=1,2", "--set-grid generations.D.train.epochs: "
                                                              "generations.D is not an item of a list of 1")):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["sweep", str(path), "--set-grid", grid, "--seeds", "0", "1"])
        lines = err.getvalue().strip().splitlines()
        assert code == 2 and len(lines) == 1 and expected in lines[0], err.getvalue()
    assert not (tmp_path / "store").exists() and not (tmp_path / "work").exists()  # nothing ran, nothing written


def test_summary_marks_a_failed_chain_and_keeps_the_others():
    from kdchain.sweep import ChainOutcome, summarize, summary_records

    def ok(point, seed, acc):
        return ChainOutcome(point=point, label=f"p{point}", seed=seed, status="FINISHED", generations=[
            {"name": "teacher", "summary": "cnn 16-32", "test_accuracy": 0.9, "params": 5178.0, "reused": False},
            {"name": "A", "summary": "cnn 8-16", "test_accuracy": acc, "params": 1442.0, "reused": False}])

    failed = ChainOutcome(point=0, label="p0", seed=1, status="FAILED", error="Diverged: loss is nan")
    all_failed = ChainOutcome(point=1, label="p1", seed=0, status="FAILED", error="Diverged: loss is nan")
    rows = summarize([ok(0, 0, 0.8), failed, all_failed])
    assert [(r.label, r.generation, r.status) for r in rows] == [
        ("p0", "teacher", "seed 1 failed"), ("p0", "A", "seed 1 failed"), ("p1", "-", "failed")]
    assert rows[1].mean == 0.8 and rows[1].std == 0.0
    records = summary_records(rows, [0, 1])
    assert records[1]["seed 1"] == "failed" and records[1]["chains"] == "1/2" and records[2]["chains"] == "0/1"
