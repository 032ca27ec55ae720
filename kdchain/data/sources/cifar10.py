"""`cifar10`: CIFAR-10 in its official python format (cifar-10-batches-py/), read by torchvision.

Pixels stay uint8 (N, 3, 32, 32) and are resized/normalised per batch on the device, so that CIFAR-10 at
224x224 for a VGG teacher costs 150 MB of memory, not 30 GB.
"""

import pickle
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from kdchain.data.images import make_normalise
from kdchain.data.splits import DataBundle, Split, files_fingerprint
from kdchain.spec.base import SpecError
from kdchain.spec.data import Augment, Source
from kdchain.spec.kinds import SOURCES

TRAIN_IMAGES = 50000
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


@SOURCES.register
class Cifar10Data(Source):
    """CIFAR-10 in its official python format (cifar-10-batches-py/) under `root`, read by torchvision."""

    kind: Literal["cifar10"] = "cifar10"
    root: str = Field("data", description="folder that holds cifar-10-batches-py/ (or where to download it)")
    download: bool = Field(False, description="let torchvision download the archive (needs internet)")
    image_size: int = Field(32, ge=8, le=512, description="images are resized (bilinear, per batch) to this size")
    normalize: Literal["dataset", "imagenet"] = Field("dataset", description="per-channel mean/std of the training "
                                                                             "split, or ImageNet's")
    val: float = Field(0.1, ge=0.0, lt=0.5, description="share of the training files held out for validation; "
                                                        "0 = train on all 50,000 (the example's protocol): "
                                                        "validation metrics then come from the test split")
    augment: Augment = Field(default_factory=lambda: Augment(crop_padding=4, flip=True),
                             description="per-batch augmentation")

    def load(self, seed: int) -> DataBundle:
        return load_cifar10(self, seed)

    def shape(self) -> tuple[tuple[int, int, int], int]:
        return (3, self.image_size, self.image_size), 10

    def train_images(self) -> int:
        return int(TRAIN_IMAGES * (1 - self.val))

    def problem(self) -> str | None:
        return cifar_missing(self)

    def fingerprint(self) -> str:
        return files_fingerprint(Path(self.root) / "cifar-10-batches-py")



def cifar_missing(spec: Cifar10Data) -> str | None:
    """None, or one sentence: which files are missing, or which one is not in CIFAR-10's python format."""
    folder = Path(spec.root) / "cifar-10-batches-py"
    missing = [f for f in CIFAR_FILES if not (folder / f).is_file()]
    if not missing:
        return next(filter(None, (cifar_malformed(folder / f) for f in CIFAR_FILES)), None)
    if spec.download:
        return None
    return (f"data.root: CIFAR-10 is not in {folder}/ (missing {', '.join(missing)}); extract the python version "
            "cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) so that data_batch_1..5, "
            f"test_batch and batches.meta lie in {folder}/, or set data.download: true where there is internet")


FORMAT = ("CIFAR-10's python format is a pickled dict with str keys: 'data', a uint8 array (N, 3072) of "
          "3x32x32 images, and 'labels', N ints 0..9 (batches.meta: 'label_names', 10 str)")


def cifar_malformed(path: Path) -> str | None:
    """None, or one sentence saying what in the file at `path` torchvision would trip on (read as it reads it)."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the same user mistake
        return f"data.root: {path} cannot be unpickled ({type(e).__name__}); {FORMAT}"
    problem = _entry_problem(path.name, entry)
    return f"data.root: {path} {problem}; {FORMAT}" if problem else None


def _entry_problem(name: str, entry) -> str | None:
    if not isinstance(entry, dict):
        return f"holds a {type(entry).__name__}, not a dict"
    if any(isinstance(k, bytes) for k in entry):
        return f"has bytes keys ({', '.join(repr(k) for k in list(entry)[:3])}), not str"
    if name == "batches.meta":
        names = entry.get("label_names")
        return None if isinstance(names, list) and len(names) == 10 else "has no 'label_names' list of 10 names"
    if "data" not in entry or ("labels" not in entry and "fine_labels" not in entry):
        return f"has no {'data' if 'data' not in entry else 'labels'!r}"
    data, labels = np.asarray(entry["data"]), list(entry.get("labels", entry.get("fine_labels")))
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        return f"has 'data' of shape {tuple(data.shape)} and dtype {data.dtype}, not (N, 3072) uint8"
    if len(labels) != len(data):
        return f"has {len(labels)} labels for {len(data)} images"
    if not all(isinstance(v, (int, np.integer)) and 0 <= v < 10 for v in labels):
        return "has labels that are not ints 0..9"
    return None


def _cifar_dataset(root: str, train: bool, download: bool):
    from torchvision.datasets import CIFAR10

    class LocalCIFAR10(CIFAR10):
        # torchvision checks each file's md5 against the published archive; files a user (or a test) wrote in the
        # official format are accepted as long as they are all there and unpickle (md5 None = existence only)
        train_list = [[name, None] for name, _ in CIFAR10.train_list]
        test_list = [[name, None] for name, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

    return (CIFAR10 if download else LocalCIFAR10)(root, train=train, download=download)


def load_cifar10(spec: Cifar10Data, seed: int) -> DataBundle:
    problem = cifar_missing(spec)
    if problem:
        raise SpecError([problem])
    train = _cifar_dataset(spec.root, True, spec.download)
    test = _cifar_dataset(spec.root, False, False)
    x = torch.from_numpy(np.ascontiguousarray(train.data)).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32) uint8
    y = torch.tensor(train.targets, dtype=torch.int64)
    xt = torch.from_numpy(np.ascontiguousarray(test.data)).permute(0, 3, 1, 2).contiguous()
    yt = torch.tensor(test.targets, dtype=torch.int64)
    if spec.val == 0:  # every training image trains; the test split stands in for validation
        norm = make_normalise(spec.normalize, x, spec.image_size)
        test = Split(xt, yt, norm)
        return DataBundle(Split(x, y, norm), test, test, num_classes=10, class_names=list(train.classes))
    tr, va, _ = _two_way_split(y.numpy(), spec.val, seed)
    norm = make_normalise(spec.normalize, x[tr], spec.image_size)
    return DataBundle(Split(x[tr], y[tr], norm), Split(x[va], y[va], norm), Split(xt, yt, norm),
                      num_classes=10, class_names=list(train.classes))


def _two_way_split(y: np.ndarray, val: float, seed: int):
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    stratify = y if np.bincount(y).min() >= 2 else None
    tr, va = train_test_split(idx, test_size=val, stratify=stratify, random_state=seed)
    return tr, va, None
