"""An existing store whose database file cannot be written: one line naming the store, before anything runs."""

import subprocess

import mlflow
import pytest
from mlflow import MlflowClient

from flows.cli import main
from kdchain.tracking import Tracker, as_store_error
from kdchain.tracking.store import prepare_sqlite
from tests.conftest import tiny_chain, write_config


@pytest.fixture
def read_only_store(tmp_path):
    """A migrated store made immutable (chattr +i): read-only even for root, as a 0444 file is for a user."""
    db = tmp_path / "store" / "mlflow.db"
    prepare_sqlite(db)
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode:
        pytest.skip("needs chattr +i (root on ext4/xfs)")
    yield db
    subprocess.run(["chattr", "-i", str(db)], check=True)


def test_a_read_only_store_file_exits_2_with_the_store_message(tmp_path, capfd, read_only_store, prefect_harness):
    cfg = tiny_chain(tmp_path, name="ro", tracking={"uri": f"sqlite:///{read_only_store}"})
    capfd.readouterr()  # MLflow's notes while the fixture made the store
    assert main(["run", str(write_config(tmp_path, cfg))]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot write the MLflow store sqlite:///{read_only_store} (" in err[0], err
    assert not (tmp_path / "work").exists()


def test_creating_an_experiment_in_a_read_only_store_raises_what_the_store_said(read_only_store):
    """Not AttributeError on the experiment that was never created: the error the CLI turns into its line."""
    tracker = object.__new__(Tracker)  # past the up-front check of Tracker(): the store's own refusal
    tracker.client = MlflowClient(f"sqlite:///{read_only_store}")
    with pytest.raises(mlflow.exceptions.MlflowException) as e:
        tracker._experiment("never-created", read_only_store)
    assert as_store_error(e.value, "x") is not None
