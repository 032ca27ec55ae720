"""The ONNX check: a tolerance relative to the logits' scale, and a mismatch that keeps the trained generation."""

import pickle
import warnings

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from flows.cli import main
from kdchain.models import build_model
from kdchain.models.families.resnet import ResnetArch
from kdchain.shipping import export_checked
from kdchain.tracking import GENERATION, KIND
from kdchain.tracking.runs import WARNING
from tests.conftest import ROOT, tiny_chain, write_config


class TracedBranch(nn.Module):
    """Python control flow on the data: tracing keeps the branch of the example input (zeros: the second), so the
    exported graph really differs from torch on positive inputs."""

    def forward(self, x):
        logits = x.flatten(1)[:, :10] * 50
        return logits * 2 if bool(x.mean() > 0) else -logits


def test_a_real_mismatch_leaves_out_the_onnx_file_and_keeps_its_difference(tmp_path):
    path, metrics = tmp_path / "model.onnx", {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's own warning about the branch is the point here
        warning = export_checked(TracedBranch(), (1, 8, 8), path, torch.rand(16, 1, 8, 8) + 0.1, 0.1, metrics)
    assert warning.startswith("ONNX export of model.onnx differs from torch by ") and "left out" in warning
    assert not path.exists()
    assert metrics["onnx_max_abs_diff"] > 10  # the order of the logits: a wrong graph, not rounding
    assert "latency_ms_onnx" not in metrics


def test_the_tolerance_follows_the_logits_scale(tmp_path):
    """A ResNet-8 whose BatchNorm variances are small: logits in the thousands, where float32
    rounding alone differs by more than 1e-4 absolute. A faithful graph still checks out."""
    torch.manual_seed(0)
    model = build_model(ResnetArch(depth=8), 10, 3).eval()
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_var.fill_(0.05)
    x, metrics = torch.randn(64, 3, 32, 32), {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert export_checked(model, (3, 32, 32), tmp_path / "m.onnx", x, 0.1, metrics) == ""
    assert (tmp_path / "m.onnx").is_file() and "latency_ms_onnx" in metrics
    scale = model(x).abs().max().item()
    assert metrics["onnx_max_abs_diff"] > 1e-4  # what the old absolute check refused
    assert metrics["onnx_max_abs_diff"] < 1e-5 * scale


def test_a_mismatch_in_a_chain_finishes_the_run_with_a_warning_and_no_onnx(tmp_path, capfd, prefect_harness,
                                                                          monkeypatch):
    import kdchain.measure.export as export

    monkeypatch.setattr(export, "MAX_ABS_DIFF", -1.0)  # a tolerance no export meets: every check is a mismatch
    monkeypatch.setattr(export, "MAX_REL_DIFF", -1.0)
    cfg = tiny_chain(tmp_path, name="mismatch")
    cfg["generations"] = cfg["generations"][:1]
    assert main(["run", str(write_config(tmp_path, cfg))]) == 0
    out = capfd.readouterr().out
    assert "teacher: warning: ONNX export of model.onnx differs from torch" in out, out
    client = MlflowClient(cfg["tracking"]["uri"])
    exp = client.get_experiment_by_name("mismatch")
    gens = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get(KIND) == "generation"]
    assert sorted(r.data.tags[GENERATION] for r in gens) == ["0", "1"]
    for run in gens:
        assert run.info.status == "FINISHED"
        assert "left out" in run.data.tags[WARNING]
        assert "onnx_max_abs_diff" in run.data.metrics
        assert [a.path for a in client.list_artifacts(run.info.run_id)].count("onnx") == 0
    assert client.get_model_version_by_alias("mismatch-student", "latest") is not None


@pytest.fixture
def small_cifar(tmp_path):
    """cifar-10-batches-py/ in the official format, 5 x 24 training and 40 test images whose red channel says
    the class."""
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in [*((f"data_batch_{i}", 24) for i in range(1, 6)), ("test_batch", 40)]:
        labels = rng.integers(0, 10, n)
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[:, :1024] = (labels[:, None] * 25).astype(np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels.tolist(), "data": data,
                         "filenames": [f"{i}.png" for i in range(n)]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                     "truck"], "num_cases_per_batch": 24, "num_vis": 3072}, f)
    return folder.parent


@pytest.mark.slow  # about 25 s: the shipped ResNet config's models on CIFAR-10 files
def test_the_shipped_cifar10_resnet_config_runs_end_to_end(tmp_path, small_cifar, capfd, prefect_harness):
    """configs/cifar10-resnet-chain.yaml at its own models, losses, optimizer and learning rate; only the data
    (160 images) and the epochs (1) are small."""
    store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    sets = [f"data.root={small_cifar}", f"workdir={tmp_path / 'work'}", f"tracking.uri={store}",
            "teacher.train.epochs=1"] + [f"generations.{g}.train.epochs=1" for g in ("resnet20", "resnet14", "resnet8")]
    code = main(["run", str(ROOT / "configs" / "cifar10-resnet-chain.yaml"), *sum((["--set", s] for s in sets), [])])
    out, err = capfd.readouterr()
    assert code == 0, out + err
    assert "Traceback" not in out + err
    for name in ("teacher", "resnet20", "resnet14", "resnet8"):
        assert f"│ {name}" in out, out
    assert "registered models:/cifar10-resnet-chain-student@latest" in out
