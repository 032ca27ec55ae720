"""The typed spec of a chain: every setting, its default and what it means.

A chain is a teacher followed by generations A, B, C, ...; generation k is distilled from generation k-1.
YAML in, pydantic models out; `load_spec` turns any mistake into `SpecError` whose lines each name the file,
the dotted field path and what is expected.
"""

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator


class SpecError(Exception):
    """A config that cannot be used; `lines` holds one readable sentence per problem."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("\n".join(lines))


class Strict(BaseModel):
    # allow_inf_nan=False: `lr: .nan` or `weight: .inf` is a typo, not a setting
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------------------------- architectures


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


def _is_checkpoint_path(value: str) -> bool:
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
        if self.weights is None or _is_checkpoint_path(self.weights):
            return self
        from torchvision import models

        enum = models.get_model_weights(self.name)
        member = self.weights.split(".")[-1]
        if member not in enum.__members__:
            raise ValueError(f"{self.weights!r} is not a weights name of {self.name}; use one of "
                             f"{', '.join(enum.__members__)} or a checkpoint path ending in .pt/.pth")
        return self


Arch = Annotated[Union[CnnArch, ResnetArch, TorchvisionArch], Field(discriminator="kind")]


class Derive(Strict):
    width: float = Field(0.5, gt=0.0, le=4.0, description="multiplier on every stage's channels")
    depth: float = Field(1.0, gt=0.0, le=4.0, description="multiplier on the blocks per stage (at least 1 each)")
    to: Literal["same", "cnn"] = Field(
        "same", description="same: the teacher's family (torchvision: its nearest smaller member); "
                            "cnn: a cnn with the teacher's stage layout, scaled")


class DeriveStudent(Strict):
    """A student written as 'the teacher's family, scaled': `student: {derive: {width: 0.5}}`."""

    derive: Derive


def _student_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        return "derive" if "derive" in value else value.get("kind")
    return "derive" if isinstance(value, DeriveStudent) else getattr(value, "kind", None)


StudentSpec = Annotated[
    Union[Annotated[CnnArch, Tag("cnn")], Annotated[ResnetArch, Tag("resnet")],
          Annotated[TorchvisionArch, Tag("torchvision")], Annotated[DeriveStudent, Tag("derive")]],
    Discriminator(_student_tag, custom_error_type="student_kind",
                  custom_error_message="expected an architecture with kind: cnn, resnet or torchvision, "
                                       "or {derive: {width, depth}}"),
]


# ---------------------------------------------------------------------------------------------- losses


class CeLoss(Strict):
    """Cross-entropy on the labels."""

    kind: Literal["ce"] = "ce"
    weight: float = Field(1.0, ge=0.0, description="weight of this term in the generation's loss")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="label smoothing of the cross-entropy")


class KdLoss(Strict):
    """Hinton et al. 2015: KL(softmax(t/T) || softmax(s/T)) * T^2."""

    kind: Literal["kd"] = "kd"
    weight: float = Field(1.0, ge=0.0, description="weight of this term in the generation's loss")
    temperature: float = Field(4.0, gt=0.0, description="softmax temperature T")


class FeatureLoss(Strict):
    """MSE between a teacher feature map and a student feature map (1x1-conv adapter and resize when they differ)."""

    kind: Literal["feature"] = "feature"
    weight: float = Field(1.0, ge=0.0, description="weight of this term in the generation's loss")
    teacher_node: str | None = Field(None, description="tapped node of the teacher; default: its last feature map")
    student_node: str | None = Field(None, description="tapped node of the student; default: its last feature map")


class FitnetLoss(Strict):
    """Romero et al. 2015 (FitNets): 0.5 * MSE between the teacher's hint layer and a conv regressor of the student's
    guided layer; the first `hint_epochs` epochs train on the hint alone (stage 1), then on the full loss."""

    kind: Literal["fitnet"] = "fitnet"
    weight: float = Field(1.0, ge=0.0, description="weight of this term in the generation's loss")
    teacher_node: str | None = Field(None, description="hint layer of the teacher; default: its last feature map")
    student_node: str | None = Field(None, description="guided layer of the student; default: its last feature map")
    hint_epochs: int = Field(0, ge=0, description="first epochs trained on the fitnet hint terms alone; 0 = none")


class AtLoss(Strict):
    """Zagoruyko & Komodakis 2017 (attention transfer): squared distance of L2-normalised spatial attention maps
    mean_c |A_c|^p of a teacher node and a student node."""

    kind: Literal["at"] = "at"
    weight: float = Field(500.0, ge=0.0, description="weight of this term (the paper's beta/2 = 1000/2)")
    p: float = Field(2.0, gt=0.0, description="exponent of the attention map mean_c |A_c|^p")
    teacher_node: str | None = Field(None, description="tapped node of the teacher; default: its last feature map")
    student_node: str | None = Field(None, description="tapped node of the student; default: its last feature map")


class DkdLoss(Strict):
    """Zhao et al. 2022 (decoupled KD): alpha * target-class KD + beta * non-target-class KD, both times T^2."""

    kind: Literal["dkd"] = "dkd"
    weight: float = Field(1.0, ge=0.0, description="weight of this term in the generation's loss")
    alpha: float = Field(1.0, ge=0.0, description="weight of TCKD (target vs. non-target probability)")
    beta: float = Field(8.0, ge=0.0, description="weight of NCKD (distribution among the non-target classes)")
    temperature: float = Field(4.0, gt=0.0, description="softmax temperature T")


class RkdLoss(Strict):
    """Park et al. 2019 (relational KD): smooth-L1 between the teacher's and the student's mean-normalised pairwise
    distances and triplet angles of penultimate embeddings (the node's map, globally average-pooled)."""

    kind: Literal["rkd"] = "rkd"
    weight: float = Field(1.0, ge=0.0, description="weight of this term in the generation's loss")
    distance_weight: float = Field(25.0, ge=0.0, description="weight of the distance term (paper: 25)")
    angle_weight: float = Field(50.0, ge=0.0, description="weight of the angle term (paper: 50)")
    teacher_node: str | None = Field(None, description="teacher node pooled into the embedding; default: last map")
    student_node: str | None = Field(None, description="student node pooled into the embedding; default: last map")


Loss = Annotated[Union[CeLoss, KdLoss, FeatureLoss, FitnetLoss, AtLoss, DkdLoss, RkdLoss],
                 Field(discriminator="kind")]


# ---------------------------------------------------------------------------------------------- training


class TrainSpec(Strict):
    epochs: int = Field(10, ge=1, description="passes over the training split")
    optimizer: Literal["adamw", "adam", "sgd"] = Field("adamw", description="optimizer")
    lr: float = Field(3e-3, gt=0.0, description="peak learning rate")
    weight_decay: float = Field(5e-4, ge=0.0, description="weight decay")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="momentum (sgd only)")
    batch_size: int = Field(64, ge=1, description="training batch size")
    schedule: Literal["cosine", "constant", "onecycle"] = Field("cosine", description="learning-rate schedule")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; default: the cores not already busy")
    compile: bool = Field(False, description="torch.compile the student's forward (pays a compile once, then faster)")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="forward-pass precision: auto = bf16 autocast where the hardware computes bf16 natively "
        "(CUDA; CPUs with AVX512-BF16 or AMX), fp32 elsewhere; bf16 = always autocast; fp32 = never")
    cache: Literal["auto", "on", "off"] = Field(
        "auto", description="teacher outputs computed once and reused every epoch: auto = when the student sees "
        "un-augmented data and the outputs fit cache_memory_mb; on = also past the budget; off = teacher runs live")
    cache_memory_mb: float = Field(512.0, gt=0.0, description="memory budget of the teacher-output cache (auto)")

    @field_validator("cache", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        # YAML 1.1 reads a bare `cache: on` / `off` as true / false; the user meant the words
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


def _default_distill() -> list:
    return [KdLoss(weight=0.7, temperature=4.0), CeLoss(weight=0.3)]


class TeacherSpec(Strict):
    """Either `model` (+ `train`): a teacher trained on labels; or `from`: an existing model, evaluated, not trained."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_by_name=True,
                              validate_by_alias=True, serialize_by_alias=True)

    model: Arch | None = Field(None, description="the teacher's architecture (omit with `from`)")
    train: TrainSpec = Field(default_factory=TrainSpec, description="how the teacher is trained (cross-entropy)")
    from_: str | None = Field(None, alias="from", min_length=1, description=(
        "start from this model instead of training one: models:/<name>@<alias> or models:/<name>/<version>, "
        "runs:/<run_id>, or a kdchain checkpoint file (model.pt)"))

    @model_validator(mode="after")
    def _model_or_from(self):
        if (self.model is None) == (self.from_ is None):
            raise ValueError("give either `model` (a teacher to train) or `from` (a model to start from), not both")
        if self.from_ is not None and "train" in self.model_fields_set:
            raise ValueError("`train` does not apply to a teacher loaded with `from` (it is not trained); remove it")
        return self


class SearchSpace(Strict):
    """The candidates: every combination of these values, each a student derived from the teacher (or from the
    written-out student) with these width/depth multipliers."""

    width: list[Annotated[float, Field(gt=0.0, le=4.0)]] = Field(
        default_factory=lambda: [0.25, 0.5, 0.75], min_length=1, description="channel multipliers to try")
    depth: list[Annotated[float, Field(gt=0.0, le=4.0)]] = Field(
        default_factory=lambda: [1.0], min_length=1, description="blocks-per-stage multipliers to try")
    temperature: list[Annotated[float, Field(gt=0.0)]] | None = Field(
        None, description="kd temperatures to try; null = keep the generation's distill")
    kd_weight: list[Annotated[float, Field(ge=0.0, le=1.0)]] | None = Field(
        None, description="kd weights w to try (ce gets 1 - w); null = keep the generation's distill")


class SearchBudget(Strict):
    """What the chosen student may cost; checked on each candidate before any training (kdchain.profile)."""

    max_params: int | None = Field(None, gt=0, description="most parameters; null = no limit")
    max_latency_ms: float | None = Field(None, gt=0.0, description="most batch-1 CPU latency in ms; null = no limit")
    max_flops: int | None = Field(None, gt=0, description="most FLOPs per image; null = no limit")


class BestAccuracy(Strict):
    kind: Literal["accuracy"] = "accuracy"


class SmallestRetaining(Strict):
    kind: Literal["smallest"] = "smallest"
    retention: float = Field(0.98, gt=0.0, le=1.5, description="least proxy val accuracy / the teacher's val accuracy")


class ParetoFront(Strict):
    kind: Literal["pareto"] = "pareto"


SearchObjective = Annotated[Union[BestAccuracy, SmallestRetaining, ParetoFront], Field(discriminator="kind")]


class SearchRunner(Strict):
    """Where trials run, as a Prefect task runner."""

    kind: Literal["threads", "dask", "ray"] = Field("threads", description="threads: a thread pool in this "
                                                    "process; dask: prefect-dask; ray: prefect-ray (not installed)")
    address: str | None = Field(None, description="dask/ray: the scheduler of an existing cluster, e.g. "
                                                  "tcp://10.0.0.5:8786; null = a local cluster of `workers`")
    workers: int = Field(2, ge=1, description="concurrent trials: threads, or local Dask worker processes")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per trial (trials x this <= cores)")


class SearchSpec(Strict):
    """Search the generation's student: proxy-train candidates within a budget, keep the winner, train it fully."""

    space: SearchSpace = Field(default_factory=SearchSpace, description="the candidates")
    budget: SearchBudget = Field(default_factory=SearchBudget, description="limits every candidate must meet")
    objective: SearchObjective = Field(default_factory=BestAccuracy, description=(
        "accuracy: best proxy val accuracy; smallest: fewest params with retention >= r; pareto: the front of "
        "accuracy against params, the most accurate on it wins"))
    trials: int = Field(8, ge=1, description="candidates proxy-trained (at most the candidates within budget)")
    proxy_epochs: int = Field(2, ge=1, description="epochs each trial trains for screening")
    prune: bool = Field(True, description="stop trials whose intermediate val accuracy is below the median")
    runner: SearchRunner = Field(default_factory=SearchRunner, description="how trials run concurrently")


class GenerationSpec(Strict):
    name: str = Field(description="short name shown everywhere, e.g. A", pattern=r"^[A-Za-z0-9_.-]+$")
    student: StudentSpec = Field(description="the student's architecture, or {derive: {...}} from its teacher")
    distill: list[Loss] = Field(default_factory=_default_distill, min_length=1,
                                description="the loss terms, summed with their weights")
    train: TrainSpec = Field(default_factory=TrainSpec, description="how this student is trained")
    search: SearchSpec | None = Field(None, description="search the student's width/depth (see kdchain.search); "
                                                        "the winner replaces `student`")
    teachers: Literal["direct", "ancestors"] = Field(
        "direct", description="direct: the generation before teaches; ancestors: every earlier generation, the "
        "teacher included, teaches the logit terms (kd, dkd) - densely guided KD, Son et al. ICCV 2021")
    teacher_weights: list[Annotated[float, Field(ge=0.0)]] | None = Field(
        None, description="with ancestors: one weight per teacher, oldest (the teacher) first; default equal")


# ---------------------------------------------------------------------------------------------- data


class SplitFractions(Strict):
    val: float = Field(0.15, gt=0.0, lt=0.5, description="share of the data held out for validation")
    test: float = Field(0.15, gt=0.0, lt=0.5, description="share of the data held out for test")


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
    val: float = Field(0.1, gt=0.0, lt=0.5, description="share of the training files held out for validation")
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


# ---------------------------------------------------------------------------------------------- chain


class TrackingSpec(Strict):
    uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///mlruns/mlflow.db")
    experiment: str | None = Field(None, description="MLflow experiment; default: the chain's name")
    register_as: str | None = Field(None, description="registered model of the last generation; default <name>-student")
    ui_url: str | None = Field(None, description="base URL of the MLflow UI that links (Prefect artifacts) point to; "
                               "default: the tracking URI when it is http(s), else http://127.0.0.1:5000 (`kdchain ui`)",
                               pattern=r"^https?://")


class PromotionSpec(Strict):
    """When a retrained model replaces the `champion` (see flows/retrain.py)."""

    min_gain: float = Field(0.005, ge=0.0, le=1.0, description=(
        "test accuracy the newcomer must gain over the champion, on the same current test split (0.01 = 1 point)"))
    max_latency_ms: float | None = Field(None, gt=0.0, description="budget: batch-1 CPU latency in ms; null = none")
    max_size_bytes: int | None = Field(None, gt=0, description="budget: size of the saved weights in bytes; null = none")


class ChainSpec(Strict):
    name: str = Field(description="the chain's name: MLflow experiment and model names derive from it",
                      pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = Field(0, ge=0, description="seed of the data split, initialisation and batch order")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where training runs")
    workdir: str = Field("mlruns/kdchain", description="checkpoints and cached results (a path every worker reaches)")
    data: DataSpec = Field(description="the data set")
    teacher: TeacherSpec = Field(description="generation 0: trained from scratch on labels, or an existing model (`from`)")
    generations: list[GenerationSpec] = Field(min_length=1, description="students, each distilled from the one before")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="where MLflow records the chain")
    promotion: PromotionSpec = Field(default_factory=PromotionSpec,
                                     description="when `kdchain schedule`/retrain moves the champion alias")

    @field_validator("generations")
    @classmethod
    def _unique_names(cls, gens: list[GenerationSpec]):
        names = [g.name for g in gens]
        dupes = sorted({n for n in names if names.count(n) > 1 or n == "teacher"})
        if dupes:
            raise ValueError(f"generation names must be unique and not 'teacher': {', '.join(dupes)}")
        return gens

    def generation_names(self) -> list[str]:
        return ["teacher"] + [g.name for g in self.generations]

    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    def registered_name(self) -> str:
        return self.tracking.register_as or f"{self.name}-student"


# ---------------------------------------------------------------------------------------------- loading


# the names pydantic gives union members in an error's loc ("constrained-int", "list[...]"): not field names
_UNION_MEMBER = re.compile(r"^(constrained|function|lax|strict|json)-\w+$|^(int|float|str|bool|none|list|dict|"
                           r"tuple|nullable|tagged-union|cnn|resnet|torchvision|derive|ce|kd|feature|fitnet|at|dkd|rkd|"
                           r"digits|cifar10|imagefolder|marks|accuracy|smallest|pareto)$")


def _format_loc(loc: tuple) -> str:
    # pydantic puts union tags ("cnn", "function-after[...]") into loc; keep the field path only
    parts = []
    for p in loc:
        if isinstance(p, int):
            parts.append(str(p))
        elif isinstance(p, str) and not any(c in p for c in "[]()") and not _UNION_MEMBER.match(p):
            parts.append(p)
    return ".".join(parts) or "(top level)"


def format_validation_error(err: ValidationError, source: str) -> list[str]:
    """One line per field path: a union's several complaints about one value are joined with "; or "."""
    by_path: dict[str, list[str]] = {}
    not_type: set[str] = set()
    for e in err.errors():
        path = _format_loc(e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `kdchain validate --schema` lists the keys)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "union_tag_not_found":  # a tagged union's value without its `kind`
            tags = e.get("ctx", {}).get("discriminator", "'kind'").strip("'")
            msg = f"`{tags}` is missing: say which one (`kdchain validate --schema` lists the kinds)"
        elif e["type"] == "union_tag_invalid":
            msg = f"unknown {e['ctx']['discriminator'].strip(chr(39))} {e['ctx']['tag']!r}; expected one of " \
                  f"{e['ctx']['expected_tags']}"
        if "input" in e and e["type"] not in ("missing", "extra_forbidden") and not isinstance(e["input"], (dict, list)):
            msg += f" (got {e['input']!r})"
        msgs = by_path.setdefault(path, [])
        if msg not in msgs:
            msgs.append(msg)
        if not e["type"].endswith(("_type", "_parsing")):
            not_type.add(path)
    # a union such as `list[int] | int` given a list with a bad item complains at `x.0` (the list branch) and
    # at `x` ("should be a valid integer", the int branch): the deeper complaint is the one that helps
    deeper = {p for p in by_path if any(q.startswith(p + ".") for q in by_path) and p not in not_type}
    return [f"{source}: {path}: {'; or '.join(msgs)}" for path, msgs in by_path.items() if path not in deeper]


def apply_override(data: dict, assignment: str) -> None:
    """Apply one `--set dotted.key=value` to the raw config dict; the value is parsed as YAML."""
    if "=" not in assignment:
        raise SpecError([f"--set {assignment}: expected dotted.key=value"])
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise SpecError([f"--set {key}: the value {raw!r} is not valid YAML ({getattr(e, 'problem', e)})"]) from None
    if not key.strip() or any(not p.strip() for p in key.split(".")):
        raise SpecError([f"--set {assignment}: expected dotted.key=value with no empty parts"])
    parts = key.strip().split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            # list items by index, or generations by name: generations.B.train.epochs
            idx = next((i for i, item in enumerate(node) if isinstance(item, dict) and item.get("name") == part), None)
            if idx is None and part.lstrip("-").isdigit():
                idx = int(part)
            if idx is None or not -len(node) <= idx < len(node):
                raise SpecError([f"--set {key}: {where} is not an item of a list of {len(node)}"])
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise SpecError([f"--set {key}: {'.'.join(parts[:depth])} is a value, not a section"])


def load_spec(path: str | Path, overrides: list[str] | tuple = ()) -> ChainSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"{path}: no such config file"])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError([f"{path}:{where} is not valid YAML: {getattr(e, 'problem', e)}"]) from None
    if not isinstance(data, dict):
        raise SpecError([f"{path}: expected a mapping of chain settings at the top level"])
    for assignment in overrides:
        apply_override(data, assignment)
    return spec_from_dict(data, str(path))


def spec_from_dict(data: dict, source: str = "config") -> ChainSpec:
    try:
        return ChainSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_validation_error(e, source)) from None


def canonical_json(obj: Any) -> str:
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def spec_hash(obj: Any) -> str:
    """Stable hash of a spec (or any JSON-able value): keys caches, checkpoints and MLflow tags."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """{'teacher.model.channels': '[32, 64]', ...}: the spec as MLflow params."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = json.dumps(obj) if isinstance(obj, list) else str(obj)
    return out
