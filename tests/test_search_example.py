"""The search on the example's terms: feature losses on concurrent trials, dask with no kept Prefect server,
depth on one-conv-per-stage students, duplicate candidates, the knee objective."""

import os
import subprocess
import sys
import threading

import pytest
import torch
from mlflow import MlflowClient

from kdchain.spec import SpecError, spec_from_dict
from tests.conftest import ROOT, tiny_chain, write_config

FEATURE = [{"kind": "feature", "weight": 0.5}, {"kind": "ce", "weight": 0.5}]


def feature_search(tmp_path, runner: dict, **search) -> dict:
    cfg = tiny_chain(tmp_path, name="feature-search")
    cfg["teacher"]["train"] = {"epochs": 3, "lr": 0.01}
    cfg["generations"] = [{"name": "A", "student": {"derive": {"width": 0.5}}, "train": {"epochs": 2, "lr": 0.01},
                           "distill": FEATURE,
                           "search": {"space": {"width": [0.25, 0.5]}, "trials": 2, "proxy_epochs": 1,
                                      "runner": runner, **search}}]
    return cfg


def test_feature_taps_in_two_threads_at_once():
    """torch.fx patches nn.Module.__call__ process-wide: two threads tracing used to crash each other."""
    from kdchain.models import build_model
    from kdchain.models.families.cnn import CnnArch
    from kdchain.models.taps import Tapped, feature_shapes

    errors = []

    def work():
        try:
            for _ in range(30):
                model = build_model(CnnArch(channels=[8, 16, 32]), 10, 3)
                assert feature_shapes(model, ["stages"], (3, 16, 16)) == {"stages": (32, 4, 4)}
                out = Tapped(model, ["stages"])(torch.zeros(2, 3, 16, 16))
                assert out["stages"].shape == (2, 32, 4, 4) and out["logits"].shape == (2, 10)
                assert not model.stages._forward_hooks  # the model keeps no hook (it must still pickle)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_search_with_a_feature_loss_on_two_threads_finishes(tmp_path, prefect_harness):
    from flows.chain import distill_chain

    cfg = feature_search(tmp_path, {"kind": "threads", "workers": 2})
    result = distill_chain(spec_from_dict(cfg))
    a = result.generations[1]
    assert a.metrics["test_accuracy"] > 0.3  # it learned (10 classes)
    exp = MlflowClient(cfg["tracking"]["uri"]).get_experiment_by_name("feature-search")
    trials = MlflowClient(cfg["tracking"]["uri"]).search_runs([exp.experiment_id], "tags.`kdchain.kind` = 'trial'")
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)


@pytest.mark.slow  # about 65 s: a Dask cluster of worker processes and a temporary Prefect server
def test_dask_search_with_no_kept_prefect_server_finishes(tmp_path):
    """No PREFECT_API_URL: the run's temporary server is handed to the local Dask workers."""
    cfg = feature_search(tmp_path, {"kind": "dask", "workers": 2})
    path = write_config(tmp_path, cfg)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=480)
    assert proc.returncode == 0, stderr[-3000:]
    assert "Timed out" not in stderr
    exp = MlflowClient(cfg["tracking"]["uri"]).get_experiment_by_name("feature-search")
    trials = MlflowClient(cfg["tracking"]["uri"]).search_runs([exp.experiment_id], "tags.`kdchain.kind` = 'trial'")
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)
    # the trials ran in the Dask worker processes, not in the command's own
    assert all(t.data.tags["kdchain.worker"].rsplit(":", 1)[1] != str(proc.pid) for t in trials)


def one_conv_per_stage(tmp_path, depth: list[float], width: list[float]) -> dict:
    cfg = tiny_chain(tmp_path, name="depth")
    cfg["generations"] = [{"name": "A", "student": {"derive": {"width": 0.5}},
                           "search": {"space": {"width": width, "depth": depth}, "trials": 4}}]
    return cfg


def test_depth_that_cannot_remove_a_conv_is_refused_in_one_line(tmp_path):
    from kdchain.checks import check_chain

    with pytest.raises(SpecError) as err:
        check_chain(spec_from_dict(one_conv_per_stage(tmp_path, [0.5, 1.0], [0.5])))
    assert len(err.value.lines) == 1
    assert "generations.0.search.space.depth: 0.5 and 1 build the same network (cnn 8-16" in err.value.lines[0]


def test_candidates_that_build_one_network_are_measured_and_trained_once(tmp_path):
    from kdchain.resolve import resolve_chain
    from kdchain.search import candidates

    spec = spec_from_dict(one_conv_per_stage(tmp_path, [1.0], [0.25, 0.26, 0.5]))  # 16-32 x 0.25 = x 0.26 = 4-8
    cands = candidates(spec, 1, resolve_chain(spec)[0].arch)
    assert [c.summary for c in cands] == ["cnn 4-8", "cnn 8-16"]


def test_knee_picks_the_smallest_within_max_drop_points_of_the_best():
    from kdchain.search import TrialResult, knee_floor, select_winner
    from kdchain.spec import SearchSpec

    def trial(n, acc, params):
        return TrialResult(number=n, params={}, summary="", arch={}, state="complete", val_accuracy=acc, epochs=1,
                           cost={"params": params}, worker="", seconds=0)

    trials = [trial(0, 0.90, 100_000), trial(1, 0.895, 30_000), trial(2, 0.87, 8_000), trial(3, 0.70, 2_000)]
    knee = SearchSpec(objective={"kind": "knee", "max_drop": 1.0})
    assert select_winner(knee, trials, 0.95)[0] == 1  # 0.5 points below the best at under a third of the size
    assert knee_floor(knee, trials) == pytest.approx(0.89)
    assert select_winner(SearchSpec(objective={"kind": "knee", "max_drop": 5.0}), trials, 0.95)[0] == 2
    assert select_winner(SearchSpec(objective={"kind": "pareto"}), trials, 0.95)[0] == 0
