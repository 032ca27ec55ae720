"""`cifar10`: CIFAR-10 in its official python format (cifar-10-batches-py/), read by torchvision.

Pixels stay uint8 (N, 3, 32, 32) and are resized/normalised per batch on the device, so that CIFAR-10 at
224x224 for a VGG teacher costs 150 MB of memory, not 30 GB.
"""

from pathlib import Path

import numpy as np
import torch

from kdchain.data.images import make_normalise
from kdchain.data.registry import DataBundle, Split, files_fingerprint, register
from kdchain.spec import Cifar10Data, SpecError

CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


def cifar_missing(spec: Cifar10Data) -> str | None:
    folder = Path(spec.root) / "cifar-10-batches-py"
    missing = [f for f in CIFAR_FILES if not (folder / f).is_file()]
    if not missing or spec.download:
        return None
    return (f"data.root: CIFAR-10 is not in {folder}/ (missing {', '.join(missing)}); extract the python version "
            "cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) so that data_batch_1..5, "
            f"test_batch and batches.meta lie in {folder}/, or set data.download: true where there is internet")


def _cifar_dataset(root: str, train: bool, download: bool):
    from torchvision.datasets import CIFAR10

    class LocalCIFAR10(CIFAR10):
        # torchvision checks each file's md5 against the published archive; files a user (or a test) wrote in the
        # official format are accepted as long as they are all there and unpickle (md5 None = existence only)
        train_list = [[name, None] for name, _ in CIFAR10.train_list]
        test_list = [[name, None] for name, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

    return (CIFAR10 if download else LocalCIFAR10)(root, train=train, download=download)


@register("cifar10", shape=lambda spec: ((3, spec.image_size, spec.image_size), 10), check=cifar_missing,
          fingerprint=lambda spec: files_fingerprint(Path(spec.root) / "cifar-10-batches-py"))


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
