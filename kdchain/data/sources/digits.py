"""`digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), optionally upscaled."""

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdchain.data.splits import DataBundle, Split, files_fingerprint, stratified_split
from kdchain.spec.data import Augment, Source, SplitFractions
from kdchain.spec.kinds import SOURCES

IMAGES = 1797


@SOURCES.register
class DigitsData(Source):
    """scikit-learn's bundled 8x8 handwritten digits: 1,797 images, 10 classes."""

    kind: Literal["digits"] = "digits"
    image_size: int = Field(8, ge=8, le=64, description="images are upscaled (bilinear) to this size")
    split: SplitFractions = Field(default_factory=SplitFractions, description="stratified, seeded split")
    augment: Augment = Field(default_factory=Augment, description="per-batch augmentation; off for digits")

    def load(self, seed: int) -> DataBundle:
        return load_digits(self, seed)

    def shape(self) -> tuple[tuple[int, int, int], int]:
        return (1, self.image_size, self.image_size), 10

    def train_images(self) -> int:
        return int(IMAGES * (1 - self.split.val - self.split.test))

    def fingerprint(self) -> str:
        return files_fingerprint(_digits_file())



def normalise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    # per-channel mean/std of the training split only, so val/test see nothing of themselves
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def _digits_file() -> Path:
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"


def load_digits(spec: DigitsData, seed: int) -> DataBundle:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    if spec.image_size != 8:
        x = F.interpolate(x, size=(spec.image_size, spec.image_size), mode="bilinear", align_corners=False)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    tr, va, te = stratified_split(bunch.target, spec.split.val, spec.split.test, seed)
    xtr, xva, xte = normalise(x[tr], x[va], x[te])
    return DataBundle(Split(xtr, y[tr]), Split(xva, y[va]), Split(xte, y[te]),
                      num_classes=10, class_names=[str(d) for d in range(10)])
