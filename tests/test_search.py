"""Per-generation search: budget checks before training, trials on a real local Dask cluster, the winner."""

import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from kdchain.spec import SpecError, spec_from_dict
from tests.conftest import ROOT, tiny_chain, write_config

BUDGET = 1500  # params: the 8x8 digits cnn at widths 0.25 / 0.5 fits, 1.0 does not


def search_chain(tmp_path, runner: dict, budget: int = BUDGET, trials: int = 4) -> dict:
    cfg = tiny_chain(tmp_path, name="searched")
    cfg["teacher"]["train"] = {"epochs": 4, "lr": 0.01}  # a teacher worth distilling from, in a few seconds
    cfg["generations"] = [{
        "name": "A", "student": {"derive": {"width": 0.5}}, "train": {"epochs": 4, "lr": 0.01},
        "search": {"space": {"width": [0.25, 0.5, 1.0], "depth": [1.0], "temperature": [2.0, 4.0]},
                   "budget": {"max_params": budget}, "trials": trials, "proxy_epochs": 1, "runner": runner}}]
    return cfg


def test_impossible_budget_stops_before_training(tmp_path, prefect_harness):
    cfg = search_chain(tmp_path, {"kind": "threads"}, budget=50)
    path = write_config(tmp_path, cfg)
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "validate", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "generations.0.search.budget: none of the 6 candidates" in lines[0] and "raise the budget" in lines[0]
    assert "Traceback" not in proc.stderr

    from flows.chain import distill_chain

    with pytest.raises(SpecError, match="meets the budget"):
        distill_chain(spec_from_dict(cfg))
    # nothing was trained: no workdir, no checkpoint
    assert not (tmp_path / "work").exists()


def test_ray_without_prefect_ray_is_one_clear_line(tmp_path):
    from kdchain.checks import check_chain

    with pytest.raises(SpecError, match=r"generations.0.search.runner.kind: ray needs prefect-ray"):
        check_chain(spec_from_dict(search_chain(tmp_path, {"kind": "ray"})))


@pytest.mark.slow  # about 35 s: a local Dask cluster of worker processes
def test_search_on_local_dask_cluster(tmp_path, prefect_harness):
    from distributed import Client, LocalCluster

    from flows.chain import distill_chain
    from kdchain.tracking import Tracker

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        worker_pids = set(client.run(os.getpid).values())
        cfg = search_chain(tmp_path, {"kind": "dask", "address": cluster.scheduler_address, "workers": 2})
        result = distill_chain(spec_from_dict(cfg))

    uri = cfg["tracking"]["uri"]
    mlflow = MlflowClient(uri)
    exp = mlflow.get_experiment_by_name("searched")
    trials = mlflow.search_runs([exp.experiment_id], "tags.`kdchain.kind` = 'trial'")
    assert len(trials) == 4
    # every trial was trained on one of the two Dask workers, and both workers trained some
    pids = {int(t.data.tags["kdchain.worker"].rsplit(":", 1)[1]) for t in trials}
    assert pids == worker_pids, (pids, worker_pids)
    # every trial within budget, and the generation's student (the winner, trained fully) too
    assert all(t.data.metrics["params"] <= BUDGET for t in trials)
    a = result.generations[1]
    assert a.metrics["params"] <= BUDGET
    assert a.metrics["test_accuracy"] > 0.5  # it learned
    chosen = [t for t in trials if t.data.tags.get("kdchain.chosen") == "true"]
    assert len(chosen) == 1 and chosen[0].data.metrics["params"] == a.metrics["params"]
    # the trials nest under the search run, the search run under the chain run; the plot is logged there
    search_run = mlflow.get_run(chosen[0].data.tags["mlflow.parentRunId"])
    assert search_run.data.tags["mlflow.parentRunId"] == result.chain_run_id
    assert "pareto.png" in {f.path for f in mlflow.list_artifacts(search_run.info.run_id)}
    # compare marks which trial was chosen
    _, rows = Tracker(uri, "searched").generation_table()
    assert rows[1]["note"].startswith("search: trial ")
