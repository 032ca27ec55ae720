"""Shared fixtures: a temporary MLflow store and workdir per test, one Prefect test harness per session."""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def tiny_chain(tmp_path: Path, name: str = "tiny", epochs: int = 1, **overrides) -> dict:
    """A 4-generation chain on 8x8 digits that trains in a few seconds."""
    cfg = {
        "name": name,
        "seed": 0,
        "workdir": str(tmp_path / "work"),
        "data": {"kind": "digits", "image_size": 8},
        "teacher": {"model": {"kind": "cnn", "channels": [16, 32]}, "train": {"epochs": epochs, "lr": 0.01}},
        "generations": [
            {"name": n, "student": {"derive": {"width": 0.5}}, "train": {"epochs": epochs}} for n in "ABC"
        ],
        "tracking": {"uri": f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"},
    }
    cfg.update(overrides)
    return cfg


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, cfg: dict, filename: str = "chain.yaml") -> Path:
    path = tmp_path / filename
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def pytest_collection_modifyitems(items):
    """Tests that run a Prefect flow (they use the session's Prefect server) are marked `flow`: `make test-fast`
    leaves them out."""
    for item in items:
        if "prefect_harness" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.flow)


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow store that MLflow itself created and migrated, with nothing in it: its migrations take about 3 s
    a store on a 2-core machine, so tests that run flows start from a copy of this one (`seeded_store`)."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments(max_results=1)
    return db


def seed_store(folder: Path, empty: Path) -> None:
    """`folder`/store/mlflow.db (where `tiny_chain` points) as a copy of the empty store."""
    import shutil

    (folder / "store").mkdir(exist_ok=True)
    shutil.copyfile(empty, folder / "store" / "mlflow.db")


@pytest.fixture(autouse=True)
def seeded_store(request, tmp_path):
    """A test that runs a flow finds `tiny_chain`'s store (tmp_path/store/mlflow.db) already created: a copy of
    `empty_store`. Tests that assert the store is never created are marked `no_seeded_store`."""
    if "prefect_harness" in request.fixturenames and not request.node.get_closest_marker("no_seeded_store"):
        seed_store(tmp_path, request.getfixturevalue("empty_store"))


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


def seed_stand_in(root: Path, train: int = 8, test: int = 4) -> list[str]:
    """What configs/seed-vgg19-cifar10.yaml needs offline, made small under `root`: a CIFAR-10 python folder of
    `train` + `test` images (class in the red channel) and an untrained VGG19's state dict where torchvision looks
    for the ImageNet weights (`root`/torch: set TORCH_HOME to it). Returns the `--set` overrides that point the config
    there and train 1 epoch a generation."""
    import pickle

    import numpy as np
    import torch
    import torchvision

    folder = root / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = [len(part) for part in np.array_split(np.arange(train), 5)]
    for name, n in [(f"data_batch_{i + 1}", k) for i, k in enumerate(sizes)] + [("test_batch", test)]:
        labels = rng.integers(0, 10, n)
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[:, :1024] = (labels[:, None] * 25).astype(np.uint8)
        (folder / name).write_bytes(pickle.dumps({"labels": labels.tolist(), "data": data}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    hub = root / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg19().state_dict(), hub / "vgg19-dcbb9e9d.pth")  # 548 MB, random weights
    return [f"data.root={root / 'data'}", "teacher.train.epochs=1",
            *(f"generations.{g}.train.epochs=1" for g in "ABC")]
