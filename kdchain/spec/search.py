"""A generation's search for its student: the space, the budget, the objective, where trials run."""

from typing import Annotated, Literal

from pydantic import Field

from kdchain.spec.base import Strict
from kdchain.spec.kinds import OBJECTIVES
from kdchain.spec.unions import SearchObjective


class SearchSpace(Strict):
    """The candidates: every combination of these values, each a student derived from the teacher (or from the
    written-out student) with these width/depth multipliers, or, for `student: {prune: ...}`, the teacher pruned
    to these shares of its channels and blocks (at most 1.0)."""

    width: list[Annotated[float, Field(gt=0.0, le=4.0)]] = Field(
        default_factory=lambda: [0.25, 0.5, 0.75], min_length=1, description="channel multipliers to try")
    depth: list[Annotated[float, Field(gt=0.0, le=4.0)]] = Field(
        default_factory=lambda: [1.0], min_length=1, description="blocks-per-stage multipliers to try")
    temperature: list[Annotated[float, Field(gt=0.0)]] | None = Field(
        None, description="kd temperatures to try; null = keep the generation's distill")
    kd_weight: list[Annotated[float, Field(ge=0.0, le=1.0)]] | None = Field(
        None, description="kd weights w to try (ce gets 1 - w); null = keep the generation's distill")


class SearchBudget(Strict):
    """What the chosen student may cost; checked on each candidate before any training (kdchain.measure.profile)."""

    max_params: int | None = Field(None, gt=0, description="most parameters; null = no limit")
    max_latency_ms: float | None = Field(None, gt=0.0, description="most batch-1 CPU latency in ms; null = no limit")
    max_flops: int | None = Field(None, gt=0, description="most FLOPs per image; null = no limit")


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
    objective: SearchObjective = Field(default_factory=lambda: OBJECTIVES["accuracy"](), description=(
        "accuracy: best proxy val accuracy; smallest: fewest params with retention >= r; pareto: the front of "
        "accuracy against params, the most accurate on it wins; knee: the smallest within max_drop points of the "
        "best"))
    trials: int = Field(8, ge=1, description="candidates proxy-trained (at most the candidates within budget)")
    proxy_epochs: int = Field(2, ge=1, description="epochs each trial trains for screening")
    prune: bool = Field(True, description="stop trials whose intermediate val accuracy is below the median")
    runner: SearchRunner = Field(default_factory=SearchRunner, description="how trials run concurrently")
