"""Architectures: the families a teacher or student is built from, and a student derived from its teacher."""

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from kdchain.spec.base import Strict


class CnnArch(Strict):
    """VGG-style CNN: stages of conv-BN-ReLU blocks, a pool after each stage, global average pool, linear head."""

    kind: Literal["cnn"] = "cnn"
    channels: list[Annotated[int, Field(ge=1)]] = Field(
        description="output channels of each stage, e.g. [32, 64, 128]", min_length=1
    )
    convs_per_stage: list[Annotated[int, Field(ge=1)]] | Annotated[int, Field(ge=1)] = Field(
        1, description="conv-BN-ReLU blocks in each stage: one number for all stages or one per stage"
    )
    kernel_size: Literal[1, 3, 5, 7] | list[Literal[1, 3, 5, 7]] = Field(
        3, description="kernel size of every conv: one number for all stages or one per stage")
    pool: Literal["max", "avg", "none"] = Field("max", description="2x2 pooling after each stage except the last")
    pool_after: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="0-based stages followed by the 2x2 pool; default: every stage except the last")
    batch_norm: bool = Field(True, description="BatchNorm after each conv")
    hidden: int = Field(0, ge=0, description="width of a hidden layer in the classifier; 0 = linear head")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the classifier")

    @model_validator(mode="after")
    def _convs_match_stages(self):
        if isinstance(self.convs_per_stage, list) and len(self.convs_per_stage) != len(self.channels):
            raise ValueError(
                f"convs_per_stage has {len(self.convs_per_stage)} entries but channels has {len(self.channels)} stages"
            )
        if isinstance(self.kernel_size, list) and len(self.kernel_size) != len(self.channels):
            raise ValueError(f"kernel_size has {len(self.kernel_size)} entries but channels has {len(self.channels)} stages")
        if self.pool_after is not None and any(i >= len(self.channels) for i in self.pool_after):
            raise ValueError(f"pool_after names a stage beyond the last (stages are 0..{len(self.channels) - 1})")
        return self

    def kernels(self) -> list[int]:
        if isinstance(self.kernel_size, int):
            return [self.kernel_size] * len(self.channels)
        return list(self.kernel_size)

    def pools(self) -> list[bool]:
        """Whether stage i is followed by the 2x2 pool."""
        if self.pool == "none":
            return [False] * len(self.channels)
        after = set(range(len(self.channels) - 1)) if self.pool_after is None else set(self.pool_after)
        return [i in after for i in range(len(self.channels))]

    def convs(self) -> list[int]:
        if isinstance(self.convs_per_stage, int):
            return [self.convs_per_stage] * len(self.channels)
        return list(self.convs_per_stage)


class ResnetArch(Strict):
    """CIFAR-style ResNet (He et al. 2016, sec. 4.2): 3 stages of n basic blocks, depth = 6n + 2."""

    kind: Literal["resnet"] = "resnet"
    depth: int = Field(20, ge=8, description="layers, 6n + 2: 8, 14, 20, 32, 44, 56, 110")
    width: float = Field(1.0, gt=0.0, le=16.0, description="multiplier on the stage widths 16, 32, 64")

    @field_validator("depth")
    @classmethod
    def _six_n_plus_2(cls, depth: int):
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 (8, 14, 20, 32, 44, 56, 110), got {depth}")
        return depth

    def blocks(self) -> int:
        return (self.depth - 2) // 6

    def widths(self) -> list[int]:
        return [max(1, round(c * self.width)) for c in (16, 32, 64)]


def is_checkpoint_path(value: str) -> bool:
    return "/" in value or value.endswith((".pt", ".pth", ".ckpt", ".bin"))


class TorchvisionArch(Strict):
    """Any torchvision classification model by name; its last linear layer is replaced by one for num_classes."""

    kind: Literal["torchvision"] = "torchvision"
    name: str = Field(description="torchvision.models name, e.g. vgg19, resnet18, mobilenet_v3_small")
    weights: str | None = Field(None, description="torchvision weights (e.g. IMAGENET1K_V1, DEFAULT) or a local "
                                                  "checkpoint file (.pt/.pth); none = random initialisation")
    freeze: list[str] = Field(default_factory=list, description="module-name prefixes whose parameters stay fixed, "
                                                                "e.g. [features] to fine-tune only the classifier")

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str):
        from torchvision import models

        names = models.list_models(module=models)
        if name not in names:
            raise ValueError(f"unknown torchvision model {name!r}; choose one of: {', '.join(names)}")
        return name

    @model_validator(mode="after")
    def _known_weights(self):
        if self.weights is None or is_checkpoint_path(self.weights):
            return self
        from torchvision import models

        enum = models.get_model_weights(self.name)
        member = self.weights.split(".")[-1]
        if member not in enum.__members__:
            raise ValueError(f"{self.weights!r} is not a weights name of {self.name}; use one of "
                             f"{', '.join(enum.__members__)} or a checkpoint path ending in .pt/.pth")
        return self


class TimmArch(Strict):
    """Any timm model by name (`timm.create_model`), its classifier reset for num_classes."""

    kind: Literal["timm"] = "timm"
    name: str = Field(description="timm model name, e.g. resnet18, convnext_atto, efficientnet_b0 (timm.list_models())")
    weights: str | None = Field(None, description="pretrained weights: a local .safetensors/.pth file, or "
                                                  "`pretrained` for timm's own download cache (Hugging Face hub "
                                                  "cache); none = random")
    freeze: list[str] = Field(default_factory=list, description="module-name prefixes whose parameters stay fixed")
    model_args: dict[str, int | float | bool | str | list[int] | list[float]] = Field(
        default_factory=dict, description="keyword arguments of the model's constructor, e.g. "
                                          "{channels: [32, 64, 128, 256]} for a timm ResNet, {dims: ..., depths: ...}")

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str):
        import difflib

        import timm

        if not timm.is_model(name):
            near = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
            raise ValueError(f"unknown timm model {name!r}; " + (f"did you mean {', '.join(near)}?" if near else
                             "timm.list_models() lists them"))
        return name


Arch = Annotated[Union[CnnArch, ResnetArch, TorchvisionArch, TimmArch], Field(discriminator="kind")]


class Derive(Strict):
    width: float = Field(0.5, gt=0.0, le=4.0, description="multiplier on every stage's channels")
    depth: float = Field(1.0, gt=0.0, le=4.0, description="multiplier on the blocks per stage (at least 1 each)")
    to: Literal["same", "cnn"] = Field(
        "same", description="same: the teacher's family (torchvision: its nearest smaller member); "
                            "cnn: a cnn with the teacher's stage layout, scaled")


class DeriveStudent(Strict):
    """A student written as 'the teacher's family, scaled': `student: {derive: {width: 0.5}}`."""

    derive: Derive


class Prune(Strict):
    """Structured pruning of the teacher (torch-pruning's DepGraph): the student keeps the teacher's surviving
    weights and is then healed by distillation."""

    width: float = Field(0.5, gt=0.0, le=1.0, description="share of channels kept in every prunable layer group "
                                                          "(coupled layers stay consistent)")
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
    base: "AnyArch" = Field(description="the architecture pruned (its teacher's)")
    prune: Prune = Field(description="the pruning settings")
    keep: list[str] = Field(default_factory=list, description="nodes that feature losses tap: the blocks holding "
                                                              "them are never removed")
    record: dict | None = Field(None, description="removed blocks, changed module attributes and tensor shapes; "
                                                  "none = not pruned yet (a plan)")


AnyArch = Annotated[Union[CnnArch, ResnetArch, TorchvisionArch, TimmArch, PrunedArch], Field(discriminator="kind")]
PrunedArch.model_rebuild()


def _student_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        return next((k for k in ("derive", "prune") if k in value), value.get("kind"))
    if isinstance(value, (DeriveStudent, PruneStudent)):
        return "derive" if isinstance(value, DeriveStudent) else "prune"
    return getattr(value, "kind", None)


StudentSpec = Annotated[
    Union[Annotated[CnnArch, Tag("cnn")], Annotated[ResnetArch, Tag("resnet")],
          Annotated[TorchvisionArch, Tag("torchvision")], Annotated[TimmArch, Tag("timm")],
          Annotated[DeriveStudent, Tag("derive")], Annotated[PruneStudent, Tag("prune")]],
    Discriminator(_student_tag, custom_error_type="student_kind",
                  custom_error_message="expected an architecture with kind: cnn, resnet, torchvision or timm, "
                                       "{derive: {width, depth}} or {prune: {width, depth}}"),
]
