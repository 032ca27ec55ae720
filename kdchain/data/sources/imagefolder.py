"""`imagefolder`: root/<class>/<image> or root/{train,val,test}/<class>/<image>, any format PIL reads.

Decoded once into uint8 (N, 3, S, S) when the images fit `memory_budget_mb`, else streamed from disk through a
DataLoader with workers; unreadable files are skipped and reported.
"""

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from kdchain.data.images import make_normalise, to_rgb
from kdchain.data.splits import DataBundle, Split, files_fingerprint, stratified_split
from kdchain.spec.base import SpecError
from kdchain.spec.data import Augment, Source, SplitFractions
from kdchain.spec.kinds import SOURCES

log = logging.getLogger("kdchain.data")
SPLITS = ("train", "val", "test")


@SOURCES.register
class ImageFolderData(Source):
    """root/<class>/<image>, or root/{train,val,test}/<class>/<image>; any format PIL reads."""

    kind: Literal["imagefolder"] = "imagefolder"
    root: str = Field(description="folder of class subfolders, or of train/ val/ test/ subfolders")
    image_size: int = Field(64, ge=8, le=1024, description="every image is resized to image_size x image_size")
    normalize: Literal["dataset", "imagenet"] = Field("dataset", description="per-channel mean/std of the training "
                                                                             "split, or ImageNet's")
    split: SplitFractions = Field(default_factory=SplitFractions,
                                  description="stratified, seeded split when root has no train/ subfolder")
    memory_budget_mb: float = Field(2048, ge=0, description="decode all images once into uint8 tensors when they fit "
                                                          "this budget; otherwise stream them from disk")
    workers: int = Field(2, ge=0, description="DataLoader worker processes when streaming")
    augment: Augment = Field(default_factory=Augment, description="per-batch augmentation")
    unlabeled: str | None = Field(None, min_length=1, description=(
        "a folder of images without labels (no class folders; read recursively): more training images that "
        "students distil on, their teacher's outputs the only target; the teacher and label terms never see them"))

    def load(self, seed: int) -> DataBundle:
        return load_imagefolder(self, seed)

    def shape(self) -> tuple[tuple[int, int, int], int]:
        classes, _ = folder_layout(self)
        return (3, self.image_size, self.image_size), len(classes)

    def train_images(self) -> int:
        root = Path(self.root)
        split = root / "train" if (root / "train").is_dir() else root
        files = sum(len(names) for _, _, names in os.walk(split)) if split.is_dir() else 0
        files = files if split != root else int(files * (1 - self.split.val - self.split.test))
        return files + len(unlabeled_files(self))

    def problem(self) -> str | None:
        return folder_problem(self) or unlabeled_problem(self)

    def notes(self) -> list[str]:
        return folder_notes(self)

    def fingerprint(self) -> str:
        own = files_fingerprint(self.root)  # a folder that grew retrains
        return own if self.unlabeled is None else own + files_fingerprint(self.unlabeled)



def _classes(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def folder_layout(spec: ImageFolderData) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """(class names, {split or "all": [(file, label)]}): by train/val/test subfolders when root has train/.
    A class folder without a single (training) file is not a class: skipped, with one warning."""
    root = Path(spec.root)
    if not root.is_dir():
        raise SpecError([f"data.root: {root} is not a folder; put images in {root}/<class>/<image> "
                         f"or {root}/train/<class>/<image>"])
    by_split = (root / "train").is_dir()
    base_root = root / "train" if by_split else root
    classes = _classes(base_root)
    if not classes:
        raise SpecError([f"data.root: {root} has no class subfolders; put images in {root}/<class>/<image>"])
    empty = [c for c in classes if not any(f.is_file() and not f.name.startswith(".") for f in (base_root / c).rglob("*"))]
    if empty:
        _warn_once(f"kdchain: data.root: skipped {len(empty)} empty class folder(s) under {base_root}: "
                   + ", ".join(empty))
        classes = [c for c in classes if c not in empty]
    if len(classes) < 2:
        raise SpecError([f"data.root: {base_root} has {len(classes)} class folder(s) with images "
                         f"({', '.join(classes) or 'none'}); a classifier needs at least 2: put each class's images "
                         f"in {base_root}/<class>/"])
    files = {}
    for split in (SPLITS if by_split else ("all",)):
        base = root / split if by_split else root
        if not base.is_dir():
            continue
        files[split] = [(f, label) for label, c in enumerate(classes) if (base / c).is_dir()
                        for f in sorted((base / c).rglob("*")) if f.is_file() and not f.name.startswith(".")]
    return classes, files


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """The layout is read several times a run (shape, load, each generation): say it once."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def decode(path: Path, size: int) -> np.ndarray:
    """One image file -> uint8 (3, size, size); raises on anything PIL cannot read."""
    from PIL import Image

    with Image.open(path) as im:
        im = to_rgb(im).resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def _why(path: Path, e: Exception) -> str:
    """"<path> (<error>)" with the whole path once: PIL's messages repeat it, and cutting them cut the name."""
    first = next((line for line in str(e).splitlines() if line.strip()), "").replace(str(path), path.name)
    return f"{path} ({type(e).__name__}: {first[:120]})"


def _try_decode(path: Path, size: int):
    try:
        return decode(path, size), None
    except Exception as e:  # not an image, truncated, unsupported mode: reported and skipped
        return None, _why(path, e)


def _verify(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return None
    except Exception as e:
        return _why(path, e)


def report_skipped(root: str, skipped: list[str]) -> None:
    """One warning line; the whole list goes to each generation's MLflow run (data/skipped_files.txt)."""
    if skipped:
        names = [s.split(" (", 1)[0] for s in skipped]
        names = [str(Path(n).relative_to(root)) if Path(n).is_relative_to(root) else n for n in names]
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        log.warning("kdchain: skipped %d unreadable file(s) under %s (listed in each generation's MLflow run, "
                    "data/skipped_files.txt): %s%s", len(skipped), root, ", ".join(names[:5]), more)


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


def readable_files(spec: ImageFolderData) -> tuple[list[str], dict[str, list[tuple[Path, int]]], list[str]]:
    """(classes, {split or "all": [(file, label)]} of the files PIL can open, skipped "path (reason)"); a
    SpecError when a class has no readable (training) image or too few images are left to split. Headers only:
    no image is decoded."""
    classes, files = folder_layout(spec)
    all_items = [it for items in files.values() for it in items]
    verdicts = list(ThreadPoolExecutor(max(1, spec.workers)).map(_verify, [p for p, _ in all_items]))
    skipped = [v for v in verdicts if v]
    bad = {p for (p, _), v in zip(all_items, verdicts) if v}
    files = {k: [(p, c) for p, c in v if p not in bad] for k, v in files.items()}
    readable = {c for p, c in files.get("train", files.get("all", []))}
    unreadable = [name for c, name in enumerate(classes) if c not in readable]
    if unreadable:
        example = f", e.g. {skipped[0]}" if skipped else ""
        raise SpecError([f"data.root: class folder(s) {', '.join(unreadable)} under {spec.root} have no image PIL "
                         f"can open ({len(skipped)} unreadable file(s){example}); add images or remove the folder"])
    base = files.get("train", files.get("all", []))
    if ("val" not in files or "test" not in files) and len(base) < 3 * len(classes):
        raise SpecError([f"data.root: {spec.root} has {len(base)} readable images for {len(classes)} classes; "
                         "add images or give val/ and test/ subfolders"])
    return classes, files, skipped


def folder_problem(spec: ImageFolderData) -> str | None:
    """What `validate` and `run` refuse before anything starts: no folder, no classes, classes without a readable
    image; None when the folder can train."""
    try:
        readable_files(spec)
    except SpecError as e:
        return e.lines[0]
    return None


def unlabeled_files(spec: ImageFolderData) -> list[Path]:
    """The files under `unlabeled`, sorted (their order is part of the seeded batches); none without it."""
    if spec.unlabeled is None or not Path(spec.unlabeled).is_dir():
        return []
    return sorted(p for p in Path(spec.unlabeled).rglob("*") if p.is_file() and not p.name.startswith("."))


def unlabeled_problem(spec: ImageFolderData) -> str | None:
    if spec.unlabeled is None:
        return None
    if not Path(spec.unlabeled).is_dir():
        return f"data.unlabeled: {spec.unlabeled} is not a folder; give a folder of images (no class folders needed)"
    if not unlabeled_files(spec):
        return f"data.unlabeled: {spec.unlabeled} holds no file; put the unlabeled images there or remove the field"
    return None


def folder_notes(spec: ImageFolderData) -> list[str]:
    """What `validate` says beside its OK: the files a run will skip."""
    try:
        skipped = readable_files(spec)[2]
    except SpecError:
        return []
    if not skipped:
        return []
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return [f"data.root: {len(skipped)} file(s) under {spec.root} are no image PIL can open and will be skipped: "
            + "; ".join(skipped[:3]) + more]


def load_imagefolder(spec: ImageFolderData, seed: int) -> DataBundle:
    classes, files, skipped = readable_files(spec)
    # the splits: given by subfolders, or stratified fractions of everything (or of train/ when val/ or test/ lack)
    base = files.get("train", files.get("all", []))
    labels = np.array([c for _, c in base])
    need_val, need_test = "val" not in files, "test" not in files
    if need_val or need_test:
        tr, va, te = stratified_split(labels, spec.split.val, spec.split.test, seed)
        if not need_test:  # val from train, test given: fold the test share back into train
            tr = np.concatenate([tr, te])
        parts = {"train": [base[i] for i in tr], "val": files.get("val") or [base[i] for i in va],
                 "test": files.get("test") or [base[i] for i in te]}
    else:
        parts = {s: files[s] for s in SPLITS}
    parts["train"] = parts["train"] + [(p, -1) for p in unlabeled_files(spec)]  # label -1: no label

    n = sum(len(v) for v in parts.values())
    fits = n * 3 * spec.image_size ** 2 <= spec.memory_budget_mb * 2**20
    if spec.unlabeled is not None and not fits:
        raise SpecError([f"data.unlabeled: the {n:,} images do not fit memory_budget_mb {spec.memory_budget_mb:g}; "
                         "unlabeled images are trained on decoded in memory: raise memory_budget_mb"])
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
