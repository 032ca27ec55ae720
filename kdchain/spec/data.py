"""Data sets, keyed by `kind`, with their split and per-batch augmentation."""

from typing import Literal, Annotated, Union

from pydantic import Field, model_validator

from kdchain.spec.base import Strict

MIN_TRAIN_SHARE = 0.5  # a split that trains on less than half of the data is a typo more often than a plan


class SplitFractions(Strict):
    """val + test may hold out at most half of the data: at least MIN_TRAIN_SHARE of it trains."""

    val: float = Field(0.15, gt=0.0, lt=0.5, description="share of the data held out for validation "
                                                         "(val + test at most 0.5)")
    test: float = Field(0.15, gt=0.0, lt=0.5, description="share of the data held out for test (val + test at most 0.5)")

    @model_validator(mode="after")
    def _enough_to_train(self):
        train = 1.0 - self.val - self.test
        if train < MIN_TRAIN_SHARE - 1e-9:
            raise ValueError(f"val {self.val:g} + test {self.test:g} leave {train:.0%} of the data for training; "
                             f"keep at least {MIN_TRAIN_SHARE:.0%} (val + test <= {1 - MIN_TRAIN_SHARE:g})")
        return self


class Augment(Strict):
    """Applied per training batch on the device: random crop from a zero-padded image, horizontal flip."""

    crop_padding: int = Field(0, ge=0, le=64, description="pixels of zero padding before a random crop back to size; 0 = off")
    flip: bool = Field(False, description="random horizontal flip (only where a flipped image keeps its class)")


class DigitsData(Strict):
    """scikit-learn's bundled 8x8 handwritten digits: 1,797 images, 10 classes."""

    kind: Literal["digits"] = "digits"
    image_size: int = Field(8, ge=8, le=64, description="images are upscaled (bilinear) to this size")
    split: SplitFractions = Field(default_factory=SplitFractions, description="stratified, seeded split")
    augment: Augment = Field(default_factory=Augment, description="per-batch augmentation; off for digits")


class Cifar10Data(Strict):
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


class ImageFolderData(Strict):
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


class MarksData(Strict):
    """Procedural product-inspection marks: 10 classes of dot/shape combinations on textured surfaces."""

    kind: Literal["marks"] = "marks"
    train_size: int = Field(20000, ge=10, description="training images")
    val_size: int = Field(2000, ge=10, description="validation images")
    test_size: int = Field(4000, ge=10, description="test images")
    image_size: int = Field(32, ge=16, le=256, description="height and width in pixels")
    difficulty: float = Field(0.95, ge=0.0, le=1.0, description="0 = clean, centred marks; 1 = heavy blur, clutter, "
                                                               "uneven lighting, small low-contrast marks")
    augment: Augment = Field(default_factory=lambda: Augment(crop_padding=2, flip=True),
                             description="per-batch augmentation (every class is mirror-symmetric)")


DataSpec = Annotated[Union[DigitsData, Cifar10Data, ImageFolderData, MarksData], Field(discriminator="kind")]
