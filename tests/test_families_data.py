"""Architecture families (resnet, torchvision), the data sets users bring (CIFAR-10 files, image folders) and the
procedural marks set; the VGG19 example's figures; each user mistake one line, exit 2."""

import logging
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from flows.cli import main
from kdchain.data import load_data
from kdchain.data.augment import random_crop, random_flip
from kdchain.data.sources.digits import DigitsData
from kdchain.data.sources.imagefolder import ImageFolderData
from kdchain.data.sources.marks import MarksData, generate
from kdchain.distill import fit
from kdchain.distill.losses import DistillLoss
from kdchain.losses.ce import CeLoss
from kdchain.models import build_model, count_params, derive_arch
from kdchain.models.families.resnet import ResnetArch
from kdchain.models.families.torchvision import TorchvisionArch, _meta, head_name
from kdchain.resolve import resolve_chain
from kdchain.spec import Derive, TrainSpec, spec_from_dict
from tests.conftest import ROOT, write_config

SEED_CONFIG = ROOT / "configs" / "seed-vgg19-cifar10.yaml"


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """CIFAR-10 in the official python format: 5 train batches of 60 and a test batch of 100 random images."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def batch(name, n):
        labels = rng.integers(0, 10, n)
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[:, :1024] = (labels[:, None] * 25).astype(np.uint8)  # red channel encodes the class: learnable
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels.tolist(), "data": data,
                         "filenames": [f"{i}.png" for i in range(n)]}, f)

    for i in range(1, 6):
        batch(f"data_batch_{i}", 60)
    batch("test_batch", 100)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"], "num_cases_per_batch": 60, "num_vis": 3072}, f)
    return root


@pytest.fixture(scope="module")
def png_root(tmp_path_factory):
    """root/<class>/<n>.png for 3 colour classes, 24 images each, plus one corrupt file and one text file."""
    root = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["red", "green", "blue"]):
        (root / name).mkdir()
        for i in range(24):
            img = rng.integers(0, 80, (20, 24, 3), dtype=np.uint8)
            img[..., c] += 150
            Image.fromarray(img).save(root / name / f"{i}.png")
    (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    (root / "blue" / "notes.txt").write_text("not an image")
    return root


def chain_cfg(tmp_path, data: dict, teacher: dict, students: list[dict] | None = None) -> dict:
    return {"name": "fam", "seed": 0, "workdir": str(tmp_path / "work"), "data": data,
            "teacher": {"model": teacher, "train": {"epochs": 1, "batch_size": 32}},
            "generations": [{"name": n, "student": s, "train": {"epochs": 1, "batch_size": 32}}
                            for n, s in zip("ABC", students or [{"derive": {"width": 0.5}}] * 2)],
            "tracking": {"uri": f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"}}


# ---------------------------------------------------------------------------------------------- families


def test_vgg19_example_figures_offline(capsys, tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no weights there: inspect must not need them
    assert main(["inspect", str(SEED_CONFIG), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["teacher"]["params"] == 139_611_210
    assert rows["A"]["params"] == 529_322
    assert rows["teacher"]["feature_maps"] == {"features": [512, 7, 7]}
    assert rows["A"]["feature_maps"] == {"stages": [512, 7, 7]}
    assert rows["B"]["arch"]["channels"] == [8, 16, 32, 64, 128, 256]


def test_vgg19_example_run_offline_says_what_to_provide(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.chdir(tmp_path)  # data/ is relative to where kdchain runs: empty here
    assert main(["run", str(SEED_CONFIG)]) == 2
    err = capsys.readouterr().err
    assert "TORCH_HOME" in err and "vgg19-dcbb9e9d.pth" in err and "checkpoint" in err
    assert "cifar-10-batches-py" in err and "data_batch_1" in err
    assert not (tmp_path / "mlruns").exists()


def test_cifar_resnets_have_the_published_sizes_and_derive_by_depth():
    sizes = {d: count_params(build_model(ResnetArch(depth=d), 10, 3)) for d in (56, 20, 14, 8)}
    assert sizes == {56: 853_018, 20: 269_722, 14: 172_506, 8: 75_290}  # 0.85M and 0.27M as in He et al.
    assert derive_arch(ResnetArch(depth=56), Derive(width=1.0, depth=1 / 3)).depth == 20
    assert derive_arch(ResnetArch(depth=20), Derive(width=0.5, depth=0.67)) == ResnetArch(depth=14, width=0.5)


def test_torchvision_heads_and_derivation():
    for name, head in (("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3")):
        model = build_model(TorchvisionArch(name=name), 7, 3)
        assert model.get_submodule(head).out_features == 7
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 7)
    assert head_name(_meta("vgg19")) == "classifier.6"
    assert derive_arch(TorchvisionArch(name="vgg19", weights="IMAGENET1K_V1"), Derive()).name == "vgg16"
    cnn = derive_arch(TorchvisionArch(name="vgg19"), Derive(to="cnn", width=0.25, depth=0.5))
    assert cnn.channels == [16, 32, 64, 128, 128] and cnn.convs() == [1, 1, 2, 2, 2]
    frozen = build_model(TorchvisionArch(name="mobilenet_v3_small", freeze=["features"]), 10, 3)
    assert all(not p.requires_grad for p in frozen.features.parameters())
    assert all(p.requires_grad for p in frozen.classifier.parameters())


def test_inspect_nodes_lists_tappable_names(tmp_path, capsys):
    cfg = chain_cfg(tmp_path, {"kind": "marks", "image_size": 32}, {"kind": "resnet", "depth": 8},
                    [{"kind": "torchvision", "name": "resnet18"}, {"kind": "cnn", "channels": [8, 16]}])
    path = write_config(tmp_path, cfg)
    assert main(["inspect", str(path), "--nodes"]) == 0
    out = capsys.readouterr().out
    assert "layer3.0.conv1" in out and "layer4.1.relu_1" in out and "stages.1" in out


@pytest.mark.parametrize("change, words", [
    (lambda c: c["teacher"]["model"].update(name="vgg99"), ["teacher.model.name", "unknown torchvision model", "vgg19"]),
    (lambda c: c["teacher"]["model"].update(freeze=["featurez"]), ["teacher.model.freeze", "'featurez'", "features"]),
    (lambda c: c["generations"][0].update(distill=[{"kind": "feature", "teacher_node": "features.99"}]),
     ["teacher_node", "'features.99'", "--nodes"]),
    (lambda c: c["teacher"]["model"].update(weights="WRONG.pt"), ["teacher.model.weights", "does not fit mobilenet_v3_small",
                                                                  "change model.name"]),
])
def test_model_mistakes_are_one_line_exit_2(tmp_path, capsys, change, words):
    torch.save(build_model(ResnetArch(depth=8), 10, 3).state_dict(), tmp_path / "WRONG.pt")
    cfg = chain_cfg(tmp_path, {"kind": "marks", "train_size": 50, "val_size": 20, "test_size": 20},
                    {"kind": "torchvision", "name": "mobilenet_v3_small"}, [{"kind": "cnn", "channels": [8, 16]}])
    change(cfg)
    if cfg["teacher"]["model"].get("weights"):
        cfg["teacher"]["model"]["weights"] = str(tmp_path / "WRONG.pt")
    path = write_config(tmp_path, cfg)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert all(w in err[0] for w in words), err[0]
    assert not (tmp_path / "store").exists() and not (tmp_path / "work").exists()


# ---------------------------------------------------------------------------------------------- data


def test_marks_are_seeded_balanced_and_mirror_safe():
    x1, y1 = generate(200, 32, 0.5, seed=3)
    x2, y2 = generate(200, 32, 0.5, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(generate(200, 32, 0.5, seed=4)[0], x1)
    assert x1.shape == (200, 3, 32, 32) and x1.dtype == torch.uint8
    assert torch.bincount(y1).tolist() == [20] * 10


def test_augmentation_crops_and_flips_on_tensors():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    assert torch.equal(random_crop(x, 0), x)
    cropped = random_crop(x, 2)
    assert cropped.shape == x.shape
    flipped = random_flip(x.repeat(50, 1, 1, 1))
    assert {torch.equal(f, x[0].flip(2)) or torch.equal(f, x[0]) for f in flipped[::2]} == {True}
    assert load_data(DigitsData(), 0).augment is None  # off by default for digits


def test_imagefolder_skips_corrupt_files_and_streams_when_over_budget(png_root, caplog):
    caplog.set_level(logging.WARNING, "kdchain.data")
    spec = ImageFolderData(root=str(png_root), image_size=16, workers=0, split={"val": 0.2, "test": 0.2})
    data = load_data(spec, 0)
    assert len(data.skipped) == 2 and "broken.png" in " ".join(data.skipped) and "notes.txt" in " ".join(data.skipped)
    assert "skipped 2 unreadable file(s)" in caplog.text
    assert len(data.train) + len(data.val) + len(data.test) == 72
    assert data.input_shape == (3, 16, 16) and data.class_names == ["blue", "green", "red"]

    # over the memory budget: streamed from disk through a DataLoader
    streamed = load_data(ImageFolderData(root=str(png_root), image_size=24, workers=0, memory_budget_mb=0.05), 0)
    assert hasattr(streamed.train, "stream") and streamed.input_shape == (3, 24, 24)
    model = build_model(ResnetArch(depth=8), 3, 3)
    result = fit(model, None, DistillLoss([CeLoss()]), streamed, TrainSpec(epochs=1, batch_size=16), seed=0)
    assert len(result.history) == 1 and result.history[0].train_loss > 0


@pytest.mark.slow  # about 20 s: two chains, on CIFAR-10 files and a PNG folder
def test_one_epoch_chains_on_cifar_files_and_png_folder(prefect_harness, tmp_path, cifar_root, png_root):
    from flows.chain import distill_chain

    for data, teacher in (({"kind": "cifar10", "root": str(cifar_root), "val": 0.2}, {"kind": "resnet", "depth": 8}),
                          ({"kind": "imagefolder", "root": str(png_root), "image_size": 16, "workers": 0},
                           {"kind": "cnn", "channels": [16, 32]})):
        spec = spec_from_dict(chain_cfg(tmp_path / data["kind"], data, teacher))
        result = distill_chain(spec)
        assert [g.name for g in result.generations] == ["teacher", "A", "B"]
        assert all(0.0 <= g.metrics["test_accuracy"] <= 1.0 for g in result.generations)
        if data["kind"] == "cifar10":
            assert [g.metrics["params"] for g in result.generations][0] == 75_290
        else:  # colour classes: even one epoch beats chance (1/3)
            assert result.generations[0].metrics["test_accuracy"] > 0.5


def test_frozen_batchnorm_keeps_its_statistics_while_the_head_trains():
    model = build_model(TorchvisionArch(name="mobilenet_v3_small", freeze=["features"]), 10, 3)
    bn = next(m for m in model.features.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    model.train()
    model(torch.randn(4, 3, 64, 64) * 5 + 3)
    assert torch.equal(bn.running_mean, before), "a frozen BatchNorm's running statistics did not move"
    again = pickle.loads(pickle.dumps(model)).train()  # as MLflow logs it: the freeze survives the round trip
    again(torch.randn(4, 3, 64, 64) * 5 + 3)
    bn_again = next(m for m in again.features.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.equal(bn_again.running_mean, before)
