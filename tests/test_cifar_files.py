"""Malformed CIFAR-10 files stop `kdchain run` before anything is written, in one line naming the file."""

import pickle

import numpy as np
import pytest

from flows.cli import main
from tests.conftest import tiny_chain, write_config

NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def cifar_folder(root, batch: dict | None = None, meta: dict | None = None):
    """CIFAR-10's python files with 4 images each; `batch` replaces data_batch_3's dict, `meta` batches.meta's."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    good = {"batch_label": "b", "data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 3]}
    for name in NAMES:
        (folder / name).write_bytes(pickle.dumps(batch if batch is not None and name == "data_batch_3" else good))
    (folder / "batches.meta").write_bytes(pickle.dumps(meta or {"label_names": [str(i) for i in range(10)]}))
    return root


@pytest.mark.parametrize("batch, meta, says", [
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}, None, "has bytes keys (b'data', b'labels')"),
    ({"data": np.zeros((4, 32, 32, 3), np.uint8), "labels": [0, 1, 2, 3]}, None,
     "has 'data' of shape (4, 32, 32, 3) and dtype uint8, not (N, 3072) uint8"),
    ({"data": np.zeros((4, 3072), np.uint8)}, None, "has no 'labels'"),
    ({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2]}, None, "has 3 labels for 4 images"),
    ({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 10]}, None, "has labels that are not ints 0..9"),
    (None, {"names": []}, "batches.meta has no 'label_names' list of 10 names"),
])
def test_malformed_cifar_files_exit_2_in_one_line_and_write_nothing(tmp_path, capsys, batch, meta, says):
    root = cifar_folder(tmp_path / "data", batch, meta)
    cfg = tiny_chain(tmp_path, data={"kind": "cifar10", "root": str(root), "image_size": 32})
    assert main(["run", str(write_config(tmp_path, cfg))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert ("data_batch_3" in err[0]) == (meta is None) and "Traceback" not in err[0]
    assert not (tmp_path / "work").exists() and not (tmp_path / "store").exists()


def test_well_formed_files_pass_the_check(tmp_path):
    from kdchain.data.sources.cifar10 import Cifar10Data, cifar_missing

    assert cifar_missing(Cifar10Data(root=str(cifar_folder(tmp_path / "data")))) is None


def test_val_0_trains_on_every_training_image_and_validates_on_the_test_split(tmp_path):
    from kdchain.data.sources.cifar10 import Cifar10Data, load_cifar10

    data = load_cifar10(Cifar10Data(root=str(cifar_folder(tmp_path / "data")), val=0), seed=0)
    assert len(data.train) == 20 and data.val is data.test and len(data.test) == 4
