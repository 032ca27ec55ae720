"""A sweep: one config run as many chains, every combination of some settings' values times some seeds.

Given on the command line (`kdchain sweep CONFIG --set-grid key=v1,v2 --seeds 0 1 2 --runner dask`), recorded as
this model on the sweep's MLflow run.
"""

from pydantic import Field

from kdchain.spec.base import Strict
from kdchain.spec.search import SearchRunner


class SweepSpec(Strict):
    """What a sweep runs: the config, its fixed overrides, the grid, the seeds, and where the chains run."""

    config: str = Field(description="the chain's YAML file every chain starts from")
    sets: list[str] = Field(default_factory=list, description="`--set` overrides applied to every chain")
    grid: dict[str, list[str]] = Field(default_factory=dict, description=(
        "dotted config key -> the values to try, each as YAML text applied like `--set key=value`; every "
        "combination of the keys' values is one grid point"))
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description=(
        "each grid point runs once per seed (`seed` of the config); mean ± std over them in the summary"))
    runner: SearchRunner = Field(default_factory=lambda: SearchRunner(kind="dask"), description=(
        "where the chains run at once, as Prefect task runs: dask (a local cluster of `workers` processes, or the "
        "scheduler at `address`) or threads of this process; `workers` = chains at a time"))
