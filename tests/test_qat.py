"""deploy.quantize: qat: a trained generation fine-tuned with fake quantization ships the int8 ONNX model it trained
as (ONNX Runtime scores what torch scored), and a model QAT cannot handle is refused before anything trains."""

from pathlib import Path

import pytest
import torch
from torch import nn

from flows.cli import main
from kdchain.data import batches, load_data
from kdchain.data.sources.digits import DigitsData
from kdchain.measure.qat import qat_problem
from kdchain.models import build_model
from kdchain.models.families.cnn import CnnArch
from kdchain.qat import allowed_disagreement, qat_generation
from kdchain.resolve import resolve_chain
from kdchain.spec import DeploySpec, load_spec
from tests.conftest import tiny_chain, write_config


def _trained_cnn(data) -> nn.Module:
    """The digits teacher of tiny_chain (cnn 16-32, BatchNorm), 3 epochs: well above chance (10 classes)."""
    torch.manual_seed(0)
    model = build_model(CnnArch(channels=[16, 32]), data.num_classes, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        for x, y in batches(data.train, 64, torch.Generator().manual_seed(0)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


@pytest.mark.slow  # 15-45 s on 2 cores: torch.onnx's dynamo export of the QDQ graph is most of it
def test_qat_int8_on_onnxruntime_scores_what_its_fake_quantized_model_scores(tmp_path):
    data = load_data(DigitsData(image_size=8), 0)
    model = _trained_cnn(data)
    spec = load_spec(write_config(tmp_path, tiny_chain(tmp_path, deploy={"quantize": "qat", "qat_epochs": 1})))
    teacher = resolve_chain(spec)[0]  # no teacher: cross-entropy on the labels
    fp32 = (model(data.test.x).argmax(1) == data.test.y).float().mean().item()
    result = qat_generation(spec, teacher, model, None, data, tmp_path / "model.int8.onnx", fp32)
    m = result.metrics
    assert fp32 > 0.5 and m["test_accuracy_int8"] > 0.5  # a real model, not chance
    assert abs(m["test_accuracy_int8"] - m["test_accuracy_int8_qat_torch"]) * 100 <= allowed_disagreement(360) + 1e-9
    assert m["size_bytes_int8"] == result.path.stat().st_size and m["qat_seconds"] > 0
    import onnx

    nodes = onnx.load(str(result.path)).graph.node
    ops = {n.op_type for n in nodes}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops  # QDQ: ONNX Runtime fuses it into QLinearConv
    assert "BatchNormalization" not in ops  # folded into the convolutions, as ONNX Runtime folds it
    convs = [n for n in nodes if n.op_type == "Conv"]
    assert convs[0].input[0] == "x" and convs[1].input[0] != "x"  # deploy.first_conv: float, as PTQ keeps it
    assert result.float_ops["Conv"] == 1  # the first; the others run as QLinearConv


def test_qat_settings_stay_out_of_other_generations_keys():
    assert "qat_epochs" not in DeploySpec(quantize="static").model_dump()
    assert DeploySpec(quantize="qat").model_dump()["qat_epochs"] == 2


class _DataDependent(nn.Module):
    """A real model torch.export cannot capture: which branch runs depends on the input's values."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4, 10)

    def forward(self, x):
        x = self.conv(x)
        if x.mean() > 0:  # data-dependent control flow
            x = x.relu()
        return self.fc(x.mean((2, 3)))


def test_a_model_qat_cannot_capture_is_named_in_one_line():
    why = qat_problem(_DataDependent(), (1, 8, 8))
    assert why.startswith("torch.export failed") and "\n" not in why


@pytest.mark.slow  # building VOLO and exporting it: 20 s
@pytest.mark.no_seeded_store  # a refusal writes no store
def test_validate_refuses_an_unexportable_qat_generation_before_training(tmp_path, capsys):
    cfg = tiny_chain(tmp_path, data={"kind": "digits", "image_size": 32}, deploy={"quantize": "qat"})
    cfg["teacher"]["model"] = {"kind": "timm", "name": "volo_d1_224", "model_args": {"img_size": 32}}
    cfg["generations"] = [{"name": "A", "student": {"kind": "cnn", "channels": [8]}}]
    assert main(["validate", str(write_config(tmp_path, cfg))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "teacher.deploy.quantize" in err[0] and "col2im" in err[0], err
    assert not Path(cfg["workdir"]).exists()  # nothing trained


@pytest.mark.slow  # a chain with QAT per generation and an export: 40-90 s on 2 cores
@pytest.mark.usefixtures("prefect_harness")
def test_a_qat_chain_ships_its_qat_files_through_run_and_export(tmp_path, capsys):
    import json

    from mlflow import MlflowClient

    cfg = tiny_chain(tmp_path, name="qatchain", epochs=2, deploy={"quantize": "qat", "qat_epochs": 1})
    cfg["generations"] = cfg["generations"][:1]  # teacher -> A
    assert main(["run", str(write_config(tmp_path, cfg))]) == 0
    client = MlflowClient(cfg["tracking"]["uri"])
    experiment = client.get_experiment_by_name("qatchain").experiment_id
    runs = client.search_runs([experiment], "tags.`kdchain.generation_name` = 'A'")
    m = runs[0].data.metrics
    assert abs(m["test_accuracy_int8"] - m["test_accuracy_int8_qat_torch"]) * 100 <= allowed_disagreement(360) + 1e-9
    assert m["test_accuracy_int8"] > 0.3 and m["qat_seconds"] > 0
    capsys.readouterr()
    assert main(["export", "--tracking-uri", cfg["tracking"]["uri"], "--out", str(tmp_path / "family")]) == 0
    manifest = json.loads((tmp_path / "family" / "manifest.json").read_text())
    assert [g["int8"]["method"] for g in manifest["generations"]] == ["qat", "qat"]
    assert manifest["generations"][1]["int8"]["test_accuracy"] == pytest.approx(m["test_accuracy_int8"], abs=1e-4)
