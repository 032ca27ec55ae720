"""Image folders decoded as their files mean (16-bit, float, palette, alpha, CMYK), empty or single classes, the
skipped files on record, and class names that travel with the model into every place it is read back from."""

import json
import logging

import mlflow
import numpy as np
import onnxruntime as ort
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from flows.cli import main
from kdchain.checkpoints import load_checkpoint
from kdchain.data import load_data
from kdchain.data.images import to_rgb
from kdchain.data.sources.imagefolder import ImageFolderData
from kdchain.distill import evaluate, fit
from kdchain.distill.losses import DistillLoss
from kdchain.losses.ce import CeLoss
from kdchain.models import build_model
from kdchain.models.families.cnn import CnnArch
from kdchain.spec import SpecError, TrainSpec
from tests.conftest import write_config


def pixel(im: Image.Image) -> tuple[int, int, int]:
    return to_rgb(im).getpixel((0, 0))


def test_every_pil_mode_becomes_the_rgb_its_file_means():
    assert pixel(Image.fromarray(np.array([[40000]], dtype=np.uint16))) == (156,) * 3  # I;16: scaled, not white
    assert pixel(Image.fromarray(np.array([[40000]], dtype=np.int32))) == (156,) * 3  # I with 16-bit values
    assert pixel(Image.fromarray(np.array([[200]], dtype=np.int32))) == (200,) * 3  # I with 8-bit values
    assert pixel(Image.fromarray(np.array([[0.5]], dtype=np.float32))) == (128,) * 3  # F in 0..1
    assert pixel(Image.new("RGBA", (1, 1), (200, 100, 50, 128))) == (100, 50, 25)  # alpha over black
    assert pixel(Image.new("LA", (1, 1), (200, 0))) == (0, 0, 0)  # fully transparent
    palette = Image.new("P", (1, 1), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10])
    assert pixel(palette) == (200, 10, 10)
    palette.info["transparency"] = 1
    assert pixel(palette) == (0, 0, 0)
    assert pixel(Image.new("CMYK", (1, 1), (0, 255, 255, 0))) == (255, 0, 0)
    assert pixel(Image.new("1", (1, 1), 1)) == (255, 255, 255)


def test_a_folder_of_16_bit_pngs_trains_on_the_real_pixel_values(tmp_path):
    """Two classes at 16-bit levels 8,000 and 50,000 (both above 255): clipped, both would be solid white."""
    rng = np.random.default_rng(0)
    for name, level in (("dark", 8000), ("bright", 50000)):
        (tmp_path / name).mkdir()
        for i in range(30):
            values = np.clip(rng.normal(level, 4000, (12, 12)), 0, 65535).astype(np.uint16)
            Image.fromarray(values).save(tmp_path / name / f"{i}.png")
    assert Image.open(tmp_path / "dark" / "0.png").mode.startswith("I")  # a real 16-bit file
    data = load_data(ImageFolderData(root=str(tmp_path), image_size=12, workers=0), 0)
    raw = data.train.x.float()
    dark, bright = raw[data.train.y == data.class_names.index("dark")], raw[data.train.y == data.class_names.index("bright")]
    assert 20 < dark.mean() < 45 and 180 < bright.mean() < 215  # 8000/257 = 31, 50000/257 = 195
    torch.manual_seed(0)
    model = build_model(CnnArch(channels=[4, 8]), 2, 3)
    fit(model, None, DistillLoss([CeLoss()]), data, TrainSpec(epochs=3, batch_size=16, lr=0.01), seed=0)
    assert evaluate(model, data.test) > 0.9


def test_empty_class_folders_are_skipped_with_one_warning_and_one_class_is_refused(tmp_path, caplog):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(6):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "empty").mkdir()
    with caplog.at_level(logging.WARNING, logger="kdchain.data"):
        data = load_data(ImageFolderData(root=str(tmp_path), image_size=8, workers=0), 0)
    assert data.class_names == ["cat", "dog"] and data.num_classes == 2
    warned = [r.getMessage() for r in caplog.records if "empty class" in r.getMessage()]
    assert warned == [f"kdchain: data.root: skipped 1 empty class folder(s) under {tmp_path}: empty"]

    for i in range(6):
        (tmp_path / "dog" / f"{i}.png").unlink()
    with pytest.raises(SpecError) as e:
        load_data(ImageFolderData(root=str(tmp_path), image_size=8, workers=0, memory_budget_mb=1), 0)
    assert e.value.lines == [f"data.root: {tmp_path} has 1 class folder(s) with images (cat); a classifier needs "
                             f"at least 2: put each class's images in {tmp_path}/<class>/"]


def test_class_names_travel_with_the_model_and_skipped_files_are_on_record(tmp_path, capfd, caplog,
                                                                          prefect_harness):
    root = tmp_path / "images"
    names = ["blue sky", "green-field", "red_barn"]
    rng = np.random.default_rng(0)
    for c, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(16):
            img = rng.integers(0, 80, (12, 12, 3), dtype=np.uint8)
            img[..., 2 - c] += 150
            Image.fromarray(img).save(root / name / f"{i}.png")
    long_name = "a-file-whose-name-is-long-enough-to-be-cut-by-any-message-that-trims-it-0123456789.png"
    (root / "red_barn" / long_name).write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    cfg = {"name": "named", "seed": 0, "workdir": str(tmp_path / "work"),
           "data": {"kind": "imagefolder", "root": str(root), "image_size": 12, "workers": 0},
           "teacher": {"model": {"kind": "cnn", "channels": [8, 16]}, "train": {"epochs": 2, "lr": 0.01}},
           "generations": [{"name": "A", "student": {"derive": {"width": 0.5}}, "train": {"epochs": 1}}],
           "tracking": {"uri": uri}, "measure": {"keep_onnx": True}}  # the ONNX file kept beside the checkpoint
    with caplog.at_level(logging.WARNING, logger="kdchain.data"):  # the record, whichever stream prints it
        assert main(["run", str(write_config(tmp_path, cfg))]) == 0
    capfd.readouterr()
    assert any(long_name in r.getMessage() for r in caplog.records)  # the warning names the file whole

    # the checkpoint (read with weights_only=True)
    a_dir = next((tmp_path / "work" / "named").glob("1-A-*"))
    assert load_checkpoint(a_dir / "model.pt")[0].class_names == names
    # the registered model, its version's tags, the logged model's metadata
    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model("models:/named-student@latest")
    assert model.class_names == names
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("named-student", "latest")
    assert json.loads(version.tags["kdchain.class_names"]) == names
    assert mlflow.models.get_model_info("models:/named-student@latest").metadata["class_names"] == names
    # the ONNX file
    meta = ort.InferenceSession(str(a_dir / "model.onnx")).get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == names
    # compare --json
    assert main(["compare", "--tracking-uri", uri, "--experiment", "named", "--json"]) == 0
    rows = json.loads(capfd.readouterr().out)["generations"]
    assert [r["class_names"] for r in rows] == [names, names]

    # the skipped file: counted in a metric, listed whole in an artifact of each generation run
    run = client.get_run(rows[1]["run_id"])
    assert run.data.metrics["skipped_files"] == 1
    listed = client.download_artifacts(run.info.run_id, "data/skipped_files.txt", str(tmp_path))
    assert open(listed).read().startswith(str(root / "red_barn" / long_name) + " (")
