"""What every data source hands to training: the splits (`Split`, `DataBundle`), batches of them, and the
calls the rest of kdchain makes on a data spec, whatever its source (kdchain/data/sources/, one module a kind).

Small data sets are held as one float tensor per split (N, C, H, W) and sliced by index: a DataLoader over
in-memory tensors is several times slower and buys nothing here.
"""

import hashlib
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from kdchain.data.augment import make_augment
from kdchain.spec.base import canonical_json, spec_hash


@dataclass
class Split:
    x: torch.Tensor  # (N, C, H, W) float32 normalised, or uint8 pixels that `transform` makes into that
    y: torch.Tensor  # (N,) int64
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None  # per batch, on the device: resize, normalise

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> "Split":
        return Split(self.x.to(device), self.y.to(device), self.transform)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.transform is None else self.transform(x)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.inputs(self.x[:1]).shape[1:])


@dataclass
class DataBundle:
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: list[str]
    skipped: list[str] = field(default_factory=list)  # unreadable files left out, "path (reason)"
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None  # per training batch, on the device

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.train.input_shape  # (C, H, W) the model sees

    def to(self, device) -> "DataBundle":
        return DataBundle(self.train.to(device), self.val.to(device), self.test.to(device),
                          self.num_classes, self.class_names, self.skipped, self.augment)


def labeled_only(data: DataBundle) -> DataBundle:
    """The bundle with its training split's labeled images alone (unlabeled ones have label -1): what the teacher
    trains on and pruning scores with; the bundle itself when every image has its label."""
    train = data.train
    if hasattr(train, "stream") or bool((train.y >= 0).all()):
        return data
    keep = train.y >= 0
    return replace(data, train=Split(train.x[keep], train.y[keep], train.transform))


def missing_data(spec) -> str | None:
    """One sentence saying which files are missing or unusable and what to do; None when the data can load."""
    return spec.problem()


def data_notes(spec) -> list[str]:
    return spec.notes()


def data_fingerprint(spec) -> str:
    """What the data behind a spec is now: its spec plus its source's fingerprint. Keys caches and the
    per-process memo, so a retrain after new files arrived trains on them instead of reusing old results."""
    return spec_hash({"spec": spec.model_dump(mode="json"), "contents": spec.fingerprint()})


def split_digest(spec, seed: int, split: str) -> str:
    """16 hex characters naming one split's images: the data's fingerprint, the seed that splits it, the split.
    MLflow shows it as the digest of the dataset a run logged (kdchain.tracking.lineage)."""
    return spec_hash({"data": data_fingerprint(spec), "seed": seed, "split": split})[:16]


def files_fingerprint(*paths: str | Path) -> str:
    """sha256 over (relative path, size, mtime) of every file under `paths`; cheap, and changes when a file is
    added, removed or rewritten. For folder-backed data sets."""
    h = hashlib.sha256()
    for root in map(Path, paths):
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            st = f.stat()
            h.update(f"{f.relative_to(root) if root.is_dir() else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def input_info(spec) -> tuple[tuple[int, int, int], int]:
    """((C, H, W), num_classes) of the data set a spec names, without loading it."""
    return spec.shape()


def load_data(spec, seed: int) -> DataBundle:
    """The data set a spec names, split with `seed`; memoised per process (a chain loads it once) until the data's
    fingerprint changes (a long-lived serve process sees the files that arrived since)."""
    return _load_cached(type(spec), canonical_json(spec), seed, data_fingerprint(spec))


@lru_cache(maxsize=4)
def _load_cached(source: type, spec_json: str, seed: int, fingerprint: str) -> DataBundle:
    parsed = source.model_validate_json(spec_json)
    bundle = parsed.load(seed)
    bundle.augment = make_augment(parsed.augment)
    return bundle


def stratified_split(y: np.ndarray, val: float, test: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train/val/test, each class spread evenly, the same for the same seed."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    rest, test_idx = train_test_split(idx, test_size=test, stratify=y, random_state=seed)
    train_idx, val_idx = train_test_split(rest, test_size=val / (1 - test), stratify=y[rest], random_state=seed)
    return train_idx, val_idx, test_idx


def batches(split: Split, batch_size: int, generator: torch.Generator | None = None,
            shuffle: bool = True, drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches sliced from the split's tensors; order from a seeded permutation when shuffling."""
    if hasattr(split, "stream"):  # a split streamed from disk (kdchain.data.sources.imagefolder.StreamSplit)
        yield from split.stream(batch_size, generator, shuffle, drop_last)
        return
    n = len(split)
    order = torch.randperm(n, generator=generator, device="cpu") if shuffle else None
    if order is not None and split.x.device.type != "cpu":
        order = order.to(split.x.device)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield split.inputs(split.x[start:start + batch_size]), split.y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            yield split.inputs(split.x[idx]), split.y[idx]
