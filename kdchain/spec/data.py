"""What every data set is (`Source`; the sources are modules of kdchain/data/sources/), its split and its
per-batch augmentation. The union of the sources, DataSpec, is built in kdchain.spec.unions."""

from pydantic import Field, model_serializer, model_validator

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


class Source(Strict):
    """A data set: its spec is the config's `data:`; its methods load it and say what it is without loading it.
    The sources are modules of kdchain/data/sources/, registered in kdchain.spec.kinds.SOURCES."""

    kind: str
    augment: Augment = Field(default_factory=Augment, description="per-batch augmentation")

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # a source with an `unlabeled` field and none given dumps (and keys its results) as before the field existed
        data = handler(self)
        if isinstance(data, dict) and data.get("unlabeled", 0) is None:
            data.pop("unlabeled")
        return data

    def load(self, seed: int):
        """The splits (kdchain.data.splits.DataBundle), split with `seed`."""
        raise NotImplementedError(f"data kind {self.kind!r} defines no load()")

    def shape(self) -> tuple[tuple[int, int, int], int]:
        """((C, H, W), number of classes) without loading the images, for checks and `inspect`."""
        raise NotImplementedError(f"data kind {self.kind!r} defines no shape()")

    def train_images(self) -> int:
        """About how many images one epoch trains on (no image is decoded): the pre-flight's time bound."""
        raise NotImplementedError(f"data kind {self.kind!r} defines no train_images()")

    def problem(self) -> str | None:
        """What `validate` and `run` refuse before anything starts (files missing or unusable, and what to do)."""
        return None

    def notes(self) -> list[str]:
        """What `validate` says beside its OK (files a run will skip)."""
        return []

    def fingerprint(self) -> str | None:
        """Changes when the data behind the spec changes (files added, edited): the spec alone does not say that an
        image folder grew. None: the spec says it all."""
        return None
