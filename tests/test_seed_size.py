"""The example at its real size: configs/seed-vgg19-cifar10.yaml end to end at 224x224 on a tiny CIFAR-format folder
and a stand-in VGG19 (random weights where torchvision looks), with export and speed at their default budget, and
what it leaves on disk: each generation's weights twice (the workdir's model.pt, the MLflow logged model)."""

import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from flows.cli import main
from tests.conftest import ROOT, seed_stand_in

SEED = ROOT / "configs" / "seed-vgg19-cifar10.yaml"
WEIGHT_FILES = {".pt", ".pth", ".onnx"}


@pytest.mark.slow  # 99 s of CPU (175 s wall at load 7): VGG19's ONNX export, check and timing at the default budget,
# 4.9 GB written (stand-in weights, checkpoint, logged model, ONNX, training state); images cost little beside that
def test_the_seed_chain_runs_at_224_and_stores_each_generation_twice(tmp_path, monkeypatch, prefect_harness):
    sets = seed_stand_in(tmp_path / "inputs")  # 8 training and 4 test images, VGG19's 548 MB state dict
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "inputs" / "torch"))
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    args = ["run", str(SEED), "--tracking-uri", uri, "--set", f"workdir={tmp_path / 'work'}"]
    t0 = time.perf_counter()
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    seconds = time.perf_counter() - t0
    assert seconds < 600  # stated: 175 s at load 7 on 2 cores; minutes, not the 798 s of the teacher alone before

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("seed-vgg19-cifar10")
    gens = sorted(client.search_runs([exp.experiment_id], "tags.`kdchain.kind` = 'generation'"),
                  key=lambda r: int(r.data.tags["kdchain.generation"]))
    assert [(g.data.tags["kdchain.generation_name"], g.info.status) for g in gens] == \
        [(n, "FINISHED") for n in ("teacher", "A", "B", "C")]
    teacher, a = gens[0].data.metrics, gens[1].data.metrics
    assert teacher["params"] == 139_611_210 and a["params"] == 529_322  # the example's models, at 224x224
    for m in (teacher, a):  # exported, checked against torch and timed at the default budget
        assert m["onnx_max_abs_diff"] <= 1e-3 and m["latency_ms_onnx"] > 0 and m["throughput_ips"] > 0
    assert not (tmp_path / "work" / "seed-vgg19-cifar10" / "train_state.pt").exists()

    # bytes: every file holding weights, in the workdir and the store, against each generation's weights once
    checkpoints = sorted((tmp_path / "work").glob("*/*/model.pt"))
    assert len(checkpoints) == 4
    weights = sum(v.numel() * v.element_size() for p in checkpoints
                  for v in torch.load(p, map_location="cpu", weights_only=True, mmap=True)["state_dict"].values())
    held = {p: p.stat().st_size for where in (tmp_path / "work", tmp_path / "store") for p in where.rglob("*")
            if p.is_file() and p.suffix in WEIGHT_FILES}
    assert sum(held.values()) <= 2 * weights * 1.001 + 200_000, sorted(held.items(), key=lambda kv: -kv[1])[:6]
    print(f"seed chain at 224x224: {seconds:.0f} s; {sum(held.values()):,d} B of weight files for "
          f"{weights:,d} B of weights ({sum(held.values()) / weights:.3f} copies)")
