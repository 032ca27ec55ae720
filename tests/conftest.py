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


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield
