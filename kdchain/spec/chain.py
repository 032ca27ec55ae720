"""The chain: a teacher (trained, or loaded with `from`) followed by generations A, B, C, ...

Generation k is distilled from generation k-1 (or from every earlier one, `teachers: ancestors`).
"""

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_serializer, model_validator

from kdchain.spec.base import Strict
from kdchain.spec.deploy import DeploySpec
from kdchain.spec.kinds import LOSSES
from kdchain.spec.measure import MeasureSpec
from kdchain.spec.retrain import RetrainSpec
from kdchain.spec.search import SearchSpec
from kdchain.spec.tracking import PromotionSpec, TrackingSpec
from kdchain.spec.train import TrainSpec
from kdchain.spec.unions import Arch, DataSpec, Loss, StudentSpec


WARM_START = ("start from this model's architecture and weights and train it (train.epochs): a kdchain checkpoint "
              "(model.pt), models:/<name>/<version> or runs:/<run_id>; a warm `kdchain retrain` fills it in from "
              "the champion family")


def _no_warm_start(data):
    # configs without warm starts dump as before the field existed: generation keys and chain runs stay theirs
    if isinstance(data, dict) and data.get("warm_start") is None:
        data.pop("warm_start", None)
    return data


def _default_distill() -> list:
    return [LOSSES["kd"](weight=0.7, temperature=4.0), LOSSES["ce"](weight=0.3)]


class TeacherSpec(Strict):
    """Either `model` (+ `train`): a teacher trained on labels; or `from`: an existing model, evaluated, not trained."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_by_name=True,
                              validate_by_alias=True, serialize_by_alias=True)

    model: Arch | None = Field(None, description="the teacher's architecture (omit with `from`)")
    train: TrainSpec = Field(default_factory=TrainSpec, description="how the teacher is trained (cross-entropy)")
    from_: str | None = Field(None, alias="from", min_length=1, description=(
        "start from this model instead of training one: models:/<name>@<alias> or models:/<name>/<version>, "
        "runs:/<run_id>, or a kdchain checkpoint file (model.pt)"))
    warm_start: str | None = Field(None, min_length=1, description=WARM_START)

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        return _no_warm_start(handler(self))

    @model_validator(mode="after")
    def _model_or_from(self):
        if (self.model is None) == (self.from_ is None):
            raise ValueError("give either `model` (a teacher to train) or `from` (a model to start from), not both")
        if self.from_ is not None and "train" in self.model_fields_set:
            raise ValueError("`train` does not apply to a teacher loaded with `from` (it is not trained); remove it")
        if self.warm_start is not None and self.from_ is not None:
            raise ValueError("warm_start trains a model further; a teacher loaded with `from` is not trained: give "
                             "`model` with warm_start, or `from` alone")
        if self.train.teacher_views:
            raise ValueError("train.teacher_views: the teacher is trained on labels and has no teacher whose views "
                             "could be stored; set teacher_views on the generations it teaches")
        return self


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
    deploy: DeploySpec | None = Field(None, description="this generation's int8 export; default: the chain's `deploy`")
    warm_start: str | None = Field(None, min_length=1, description=WARM_START + "; `student` and `search` then "
                                   "give way to the architecture it holds")

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        return _no_warm_start(handler(self))

    @field_validator("student", mode="before")
    @classmethod
    def _one_kind_of_student(cls, value):
        if isinstance(value, dict):
            given = [f"`{k}`" for k in ("derive", "prune", "kind") if k in value]
            if len(given) > 1:
                raise ValueError(f"give one of `derive`, `prune` or an architecture's `kind`, not {' and '.join(given)}")
        return value

    @field_validator("distill")
    @classmethod
    def _some_weight(cls, terms: list):
        if not any(t.weight for t in terms):
            raise ValueError("every term has weight 0, so the student would learn nothing; give at least one term "
                             "a weight above 0")
        return terms


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
    measure: MeasureSpec = Field(default_factory=MeasureSpec, description="ONNX export and speed after each "
                                                                         "generation, and their time budget")
    promotion: PromotionSpec = Field(default_factory=PromotionSpec,
                                     description="when `kdchain schedule`/retrain moves the champion alias")
    deploy: DeploySpec = Field(default_factory=DeploySpec, description="what each generation ships: fp32 ONNX, "
                               "and with quantize: static|dynamic an int8 ONNX measured beside it")
    retrain: RetrainSpec = Field(default_factory=RetrainSpec, description="how `kdchain retrain` trains the family "
                                 "again: full, or warm from the champion family's weights")

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        data = handler(self)  # the default `retrain` is left out: chain runs stay those of configs written before it
        if isinstance(data, dict) and self.retrain == RetrainSpec():
            data.pop("retrain", None)
        return data

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

    def deploy_of(self, index: int) -> DeploySpec:
        """Generation `index`'s deploy settings (0 = the teacher): its own, else the chain's."""
        own = self.generations[index - 1].deploy if index > 0 else None
        return own or self.deploy

    def registered_name(self) -> str:
        return self.tracking.register_as or f"{self.name}-student"
