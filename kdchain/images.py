"""Image data sets from disk: CIFAR-10 in its official format, and folders of class subfolders.

Both keep decoded pixels as uint8 (N, 3, H, W) and resize/normalise per batch on the device, so that
CIFAR-10 at 224x224 for a VGG teacher costs 150 MB of memory, not 30 GB. An image folder that does not fit
its memory budget is streamed from disk through a DataLoader with workers instead.
"""

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdchain.data import DataBundle, Split, files_fingerprint, register, stratified_split
from kdchain.specs import Cifar10Data, ImageFolderData, SpecError

log = logging.getLogger("kdchain.data")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Normalise:
    """uint8 (N, C, h, w) on any device -> float (N, C, size, size): bilinear resize, then (x/255 - mean) / std."""

    def __init__(self, mean, std, size: int):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


def make_normalise(kind: str, train_u8: torch.Tensor, size: int) -> Normalise:
    if kind == "imagenet":
        return Normalise(IMAGENET_MEAN, IMAGENET_STD, size)
    sample = train_u8[:5000].float() / 255  # per-channel statistics of (up to 5,000) training images
    return Normalise(sample.mean(dim=(0, 2, 3)).tolist(), sample.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist(), size)


# ---------------------------------------------------------------------------------------------- cifar10

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


# ---------------------------------------------------------------------------------------------- image folders

SPLITS = ("train", "val", "test")


def _classes(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def folder_layout(spec: ImageFolderData) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """(class names, {split or "all": [(file, label)]}): by train/val/test subfolders when root has train/."""
    root = Path(spec.root)
    if not root.is_dir():
        raise SpecError([f"data.root: {root} is not a folder; put images in {root}/<class>/<image> "
                         f"or {root}/train/<class>/<image>"])
    by_split = (root / "train").is_dir()
    classes = _classes(root / "train" if by_split else root)
    if not classes:
        raise SpecError([f"data.root: {root} has no class subfolders; put images in {root}/<class>/<image>"])
    files = {}
    for split in (SPLITS if by_split else ("all",)):
        base = root / split if by_split else root
        if not base.is_dir():
            continue
        files[split] = [(f, label) for label, c in enumerate(classes) if (base / c).is_dir()
                        for f in sorted((base / c).rglob("*")) if f.is_file() and not f.name.startswith(".")]
    return classes, files


def _folder_shape(spec: ImageFolderData):
    classes, _ = folder_layout(spec)
    return (3, spec.image_size, spec.image_size), len(classes)


def decode(path: Path, size: int) -> np.ndarray:
    """One image file -> uint8 (3, size, size); raises on anything PIL cannot read."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB").resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def _try_decode(path: Path, size: int):
    try:
        return decode(path, size), None
    except Exception as e:  # not an image, truncated, unsupported mode: reported and skipped
        return None, f"{path} ({type(e).__name__}: {str(e)[:80]})"


def _verify(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return None
    except Exception as e:
        return f"{path} ({type(e).__name__}: {str(e)[:80]})"


def report_skipped(root: str, skipped: list[str]) -> None:
    if skipped:
        log.warning("kdchain: skipped %d unreadable file(s) under %s: %s%s", len(skipped), root,
                    "; ".join(skipped[:3]), " ..." if len(skipped) > 3 else "")


class FolderImages(torch.utils.data.Dataset):
    """(uint8 (3, S, S), label) per file; None for a file that fails to decode (the collate drops it)."""

    def __init__(self, items: list[tuple[Path, int]], size: int):
        self.items, self.size = items, size

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        img, _ = _try_decode(path, self.size)
        return None if img is None else (torch.from_numpy(img), label)


def _collate(samples):
    samples = [s for s in samples if s is not None]
    if not samples:
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    return torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples])


class StreamSplit:
    """A split too large for memory: batches decoded from disk by DataLoader workers, moved to the device."""

    def __init__(self, items, size: int, transform, workers: int, device="cpu"):
        self.items, self.size, self.transform, self.workers = items, size, transform, workers
        self.y = torch.tensor([label for _, label in items], dtype=torch.int64)
        self.device = torch.device(device)

    def __len__(self):
        return len(self.items)

    def to(self, device) -> "StreamSplit":
        return StreamSplit(self.items, self.size, self.transform, self.workers, device)

    @property
    def input_shape(self):
        return (3, self.transform.size, self.transform.size)

    def stream(self, batch_size, generator=None, shuffle=True, drop_last=False):
        loader = torch.utils.data.DataLoader(FolderImages(self.items, self.size), batch_size=batch_size,
                                             shuffle=shuffle, generator=generator, drop_last=drop_last,
                                             num_workers=self.workers, collate_fn=_collate)
        for x, y in loader:
            if len(y):
                yield self.transform(x.to(self.device)), y.to(self.device)


@register("imagefolder", shape=_folder_shape, fingerprint=lambda spec: files_fingerprint(spec.root))  # a growing folder retrains
def load_imagefolder(spec: ImageFolderData, seed: int) -> DataBundle:
    classes, files = folder_layout(spec)
    all_items = [it for items in files.values() for it in items]
    skipped = [s for s in ThreadPoolExecutor(max(1, spec.workers)).map(_verify, [p for p, _ in all_items]) if s]
    bad = {s.split(" (")[0] for s in skipped}
    files = {k: [(p, c) for p, c in v if str(p) not in bad] for k, v in files.items()}

    # the splits: given by subfolders, or stratified fractions of everything (or of train/ when val/ or test/ lack)
    base = files.get("train", files.get("all", []))
    labels = np.array([c for _, c in base])
    need_val, need_test = "val" not in files, "test" not in files
    if need_val or need_test:
        if len(base) < 3 * len(classes):
            raise SpecError([f"data.root: {spec.root} has {len(base)} readable images for {len(classes)} classes; "
                             "add images or give val/ and test/ subfolders"])
        tr, va, te = stratified_split(labels, spec.split.val, spec.split.test, seed)
        if not need_test:  # val from train, test given: fold the test share back into train
            tr = np.concatenate([tr, te])
        parts = {"train": [base[i] for i in tr], "val": files.get("val") or [base[i] for i in va],
                 "test": files.get("test") or [base[i] for i in te]}
    else:
        parts = {s: files[s] for s in SPLITS}

    n = sum(len(v) for v in parts.values())
    fits = n * 3 * spec.image_size ** 2 <= spec.memory_budget_mb * 2**20
    if fits:  # decode once, keep uint8
        splits = {}
        with ThreadPoolExecutor(max(1, spec.workers)) as pool:
            for name, items in parts.items():
                decoded = list(pool.map(lambda it: _try_decode(it[0], spec.image_size), items))
                skipped += [err for _, err in decoded if err]
                keep = [(img, c) for (img, _), (_, c) in zip(decoded, items) if img is not None]
                splits[name] = (torch.from_numpy(np.stack([img for img, _ in keep])) if keep else
                                torch.zeros(0, 3, spec.image_size, spec.image_size, dtype=torch.uint8),
                                torch.tensor([c for _, c in keep], dtype=torch.int64))
        norm = make_normalise(spec.normalize, splits["train"][0], spec.image_size)
        out = {k: Split(x, y, norm) for k, (x, y) in splits.items()}
    else:  # stream; statistics from a sample of the training images
        sample = [img for img, _ in (_try_decode(p, spec.image_size) for p, _ in parts["train"][:512]) if img is not None]
        norm = make_normalise(spec.normalize, torch.from_numpy(np.stack(sample)), spec.image_size)
        out = {k: StreamSplit(v, spec.image_size, norm, spec.workers) for k, v in parts.items()}
    report_skipped(spec.root, skipped)
    return DataBundle(out["train"], out["val"], out["test"], num_classes=len(classes), class_names=classes,
                      skipped=skipped)
