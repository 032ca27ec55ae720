"""Architectures: what every model family is (`Family`; the families are modules of kdchain/models/families/,
registered in kdchain.spec.kinds.FAMILIES), a student derived from its teacher, and one pruned from it. The unions
of them (Arch, AnyArch, StudentSpec) are built in kdchain.spec.unions."""

from typing import Annotated, Literal

from pydantic import Field, model_serializer, model_validator

from kdchain.spec.base import SpecError, Strict


class Family(Strict):
    """An architecture family: its spec is the config's `model:`, its methods build and describe the model.
    `derive` and `prepare` are optional; `build` and `default_tap` are not."""

    kind: str

    def build(self, num_classes: int, in_channels: int):
        """The torch module, initialised (pretrained weights come later, in `prepare`)."""
        raise NotImplementedError(f"model kind {self.kind!r} defines no build()")

    def describe(self) -> str:
        """One line for tables: `cnn 16-32-64`, `resnet-20`, ..."""
        return self.kind

    def default_tap(self) -> str:
        """The node a feature loss reads when it names none: the deepest feature map before the head."""
        raise NotImplementedError(f"model kind {self.kind!r} defines no default_tap()")

    def derive(self, derive: "Derive"):
        """A student of this family (or a cnn, `derive.to: cnn`) scaled by derive's width and depth."""
        raise SpecError([f"student.derive: cannot derive from a {self.kind!r} teacher; write the student out or "
                         "prune it (`student: {prune: {width: ...}}`)"])

    def prepare(self, model) -> None:
        """Load pretrained weights into the built `model`, just before training (building stays offline)."""

    def missing_weights(self) -> str | None:
        """One sentence saying what to put where when weights are asked for and not on disk; None otherwise."""
        return None

    def weights_problem(self, num_classes: int, in_channels: int) -> str | None:
        """Weights on disk that do not fit this model, in one sentence; None when they fit (or none are asked)."""
        return None


def is_checkpoint_path(value: str) -> bool:
    return "/" in value or value.endswith((".pt", ".pth", ".ckpt", ".bin"))


class Derive(Strict):
    width: float = Field(0.5, gt=0.0, le=4.0, description="multiplier on every stage's channels")
    depth: float = Field(1.0, gt=0.0, le=4.0, description="multiplier on the blocks per stage (at least 1 each)")
    to: Literal["same", "cnn"] = Field(
        "same", description="same: the teacher's family (torchvision: its nearest smaller member); "
                            "cnn: a cnn with the teacher's stage layout, scaled")


class DeriveStudent(Strict):
    """A student written as 'the teacher's family, scaled': `student: {derive: {width: 0.5}}`."""

    derive: Derive


class PruneTarget(Strict):
    """What a pruned student must fit: a parameter count, FLOPs per image, or batch-1 latency on this machine."""

    params: int | None = Field(None, gt=0, description="at most this many parameters")
    flops: int | None = Field(None, gt=0, description="at most this many FLOPs per image")
    latency_ms: float | None = Field(None, gt=0.0, description="at most this batch-1 latency on this machine (ms)")
    precision: Literal["fp32", "int8"] = Field("fp32", description="latency_ms of the fp32 model (torch, 1 thread) "
                                                                   "or of its int8 ONNX model (ONNX Runtime)")

    @model_validator(mode="after")
    def _one_target(self):
        given = [k for k in ("params", "flops", "latency_ms") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give one of params, flops or latency_ms" + (f", not {' and '.join(given)}"
                                                                         if given else ""))
        return self

    def measure(self) -> str:
        return next(k for k in ("params", "flops", "latency_ms") if getattr(self, k) is not None)

    def limit(self) -> float:
        return float(getattr(self, self.measure()))


class Prune(Strict):
    """Structured pruning of the teacher (torch-pruning's DepGraph): the student keeps the teacher's surviving
    weights and is then healed by distillation."""

    width: float = Field(0.5, gt=0.0, le=1.0, description="share of channels kept in every prunable layer group "
                                                          "(coupled layers stay consistent)")
    stage_widths: list[Annotated[float, Field(gt=0.0, le=1.0)]] | None = Field(
        None, min_length=1, description="share of channels kept per stage instead of one width for all: a stage is "
                                        "the layers whose outputs have one feature-map size, in forward order (a "
                                        "transformer's blocks are one stage); a count that does not match the "
                                        "teacher's stages is refused, naming them")
    depth: float = Field(1.0, gt=0.0, le=1.0, description="share of removable blocks kept; the blocks whose removal "
                                                          "changes their output least go first (1 - cos(in, out))")
    importance: Literal["l2", "taylor", "bn_scale", "random"] = Field(
        "l2", description="channel importance: l2 group magnitude, taylor (weight x gradient on training batches), "
                          "bn_scale (|BatchNorm gamma|) or random")
    round_to: int = Field(8, ge=1, description="kept channels are rounded to a multiple of this")
    steps: int = Field(1, ge=1, le=20, description="prune in this many steps, with a short distillation from the "
                                                   "teacher (recovery_batches) between them")
    batches: int = Field(4, ge=0, le=64, description="seeded training batches that score taylor channels and blocks")
    recovery_batches: int = Field(20, ge=0, description="distillation steps between two pruning steps")
    attention: Literal["dims", "heads"] = Field(
        "dims", description="a transformer's attention keeps `width` of each head's channels (dims) or of its heads "
                            "(heads); qkv, proj and the head count and size its forward uses change together")
    embed: bool = Field(False, description="a transformer also loses `width` of its embedding (the residual stream "
                                           "every block adds to); by default it keeps it")
    target: PruneTarget | None = Field(None, description="size the student by what it must fit instead of width and "
                                                         "depth: plans from the trained teacher that meet it are "
                                                         "probed, the best trains (kdchain.sizing)")
    candidates: int = Field(4, ge=1, le=16, description="with target: the plans that meet it, probed")
    probe_steps: int = Field(50, ge=1, description="with target: distillation steps each candidate is probed for")

    @model_serializer(mode="wrap")
    def _defaults_left_out(self, handler):
        # the defaults of the transformer settings are left out of the dump: generation keys stay as they were
        data = handler(self)
        if isinstance(data, dict):
            if self.attention == "dims":
                data.pop("attention", None)
            if not self.embed:
                data.pop("embed", None)
            if self.stage_widths is None:
                data.pop("stage_widths", None)
            if self.target is None:
                for key in ("target", "candidates", "probe_steps"):
                    data.pop(key, None)
        return data

    def mean_width(self) -> float:
        """The share of channels kept, stage widths averaged: what `derive` from a pruned teacher scales by."""
        return sum(self.stage_widths) / len(self.stage_widths) if self.stage_widths else self.width

    @model_validator(mode="after")
    def _scores_need_data(self):
        if self.batches == 0 and self.importance == "taylor":
            raise ValueError("importance taylor scores channels by gradients on training batches; set batches to "
                             "1 or more or use importance l2")
        if self.batches == 0 and self.depth < 1.0:
            raise ValueError("depth below 1.0 scores blocks on training batches; set batches to 1 or more")
        return self


class PruneStudent(Strict):
    """A student pruned from its teacher, keeping its weights: `student: {prune: {width: 0.5}}`."""

    prune: Prune


class PrunedArch(Strict):
    """The architecture of a pruned model: the one it was pruned from, the settings, and (once pruned) the record
    that rebuilds it exactly. Without a record it is a plan: building it prunes the base's initial weights."""

    kind: Literal["pruned"] = "pruned"
    base: "AnyArch" = Field(description="the architecture pruned (its teacher's); a forward reference, resolved in "
                                        "kdchain.spec.unions once every family is registered")
    prune: Prune = Field(description="the pruning settings")
    keep: list[str] = Field(default_factory=list, description="nodes that feature losses tap: the blocks holding "
                                                              "them are never removed")
    record: dict | None = Field(None, description="removed blocks, changed module attributes and tensor shapes; "
                                                  "none = not pruned yet (a plan)")
