"""A sweep as library calls: the grid of `--set-grid` values, one chain spec per grid point and seed (every one
checked before anything runs), and the summary of the finished chains: per grid point and generation, test
accuracy mean ± std over the seeds. Nothing here imports prefect or mlflow (flows/sweep.py runs the chains).
"""

import itertools
import statistics

from pydantic import BaseModel

from kdchain.checks import check_chain
from kdchain.spec import ChainSpec, SpecError, SweepSpec, load_spec


class SweepJob(BaseModel):
    """One chain of the sweep: grid point `point` (its `label`, e.g. `generations.C.train.epochs=10`) at `seed`."""

    point: int
    label: str
    seed: int
    spec: ChainSpec


class ChainOutcome(BaseModel):
    """What one chain gave back: its generations' figures, or the one-line reason it failed."""

    point: int
    label: str
    seed: int
    status: str  # FINISHED or FAILED
    error: str | None = None
    chain_run_id: str | None = None
    seconds: float = 0.0
    generations: list[dict] = []  # {name, summary, test_accuracy, params, reused}


class SummaryRow(BaseModel):
    """One generation of one grid point, over the seeds."""

    point: int
    label: str
    generation: str
    architecture: str = ""
    params: float | None = None
    accuracy: dict[int, float] = {}  # seed -> test accuracy (finished chains only)
    failed: list[int] = []  # seeds whose chain failed

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.accuracy.values()) if self.accuracy else None

    @property
    def std(self) -> float | None:
        xs = list(self.accuracy.values())
        return (statistics.stdev(xs) if len(xs) > 1 else 0.0) if xs else None

    @property
    def status(self) -> str:
        if not self.failed:
            return "ok"
        if not self.accuracy:
            return "failed"
        return "seed " + ", ".join(map(str, self.failed)) + " failed"


def mean_std(xs: list[float]) -> str:
    """`98.61 ± 0.28`: the mean and the sample standard deviation of accuracies (fractions) in percent."""
    m = statistics.mean(xs) * 100
    s = statistics.stdev(xs) * 100 if len(xs) > 1 else 0.0
    return f"{m:.2f} ± {s:.2f}"


# ---------------------------------------------------------------------------------------------- the grid


def split_values(text: str) -> list[str]:
    """`10,20` -> ['10', '20']; commas inside [...], {...} or quotes belong to the value (`[8,16],[16,32]`)."""
    values, current, depth, quote = [], "", 0, None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(current.strip())
            current = ""
            continue
        current += ch
    return values + [current.strip()]


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`--set-grid key=v1,v2` (repeatable) -> {key: [v1, v2]}; SpecError naming the flag for a malformed one."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        values = split_values(raw) if sep else []
        if not key or not sep or not raw.strip() or any(not p.strip() for p in key.split(".")):
            raise SpecError([f"kdchain sweep: --set-grid {item}: expected dotted.key=value1,value2,..."])
        if "" in values:
            raise SpecError([f"kdchain sweep: --set-grid {item}: an empty value between commas"])
        if key == "seed":
            raise SpecError(["kdchain sweep: --set-grid seed: give the seeds with --seeds 0 1 2"])
        if key in grid:
            raise SpecError([f"kdchain sweep: --set-grid {key} is given twice; list all its values in one"])
        if len(set(values)) < len(values):
            raise SpecError([f"kdchain sweep: --set-grid {item}: a value is given twice"])
        grid[key] = values
    return grid


def grid_points(grid: dict[str, list[str]]) -> list[tuple[str, list[str]]]:
    """[(label, overrides)], one per combination of the grid's values, in the order given; a single point
    labelled `config` when the grid is empty (a sweep over seeds alone)."""
    if not grid:
        return [("config", [])]
    points = []
    for combo in itertools.product(*grid.values()):
        overrides = [f"{k}={v}" for k, v in zip(grid, combo)]
        points.append((" · ".join(overrides), overrides))
    return points


def _single_value_problems(sweep: SweepSpec) -> list[str]:
    """Each grid value on its own: a bad key (every value refused alike) is one line naming the key; a bad value
    one line naming the value."""
    problems = []
    for key, values in sweep.grid.items():
        refused: dict[str, list[str]] = {}
        for value in values:
            try:
                load_spec(sweep.config, [*sweep.sets, f"{key}={value}"])
            except SpecError as e:
                for line in e.lines:
                    line = line.removeprefix(f"--set {key}={value}: ").removeprefix(f"--set {key}: ")
                    refused.setdefault(line, []).append(value)
        for line, bad in refused.items():
            where = key if len(bad) == len(values) > 1 else f"{key}={','.join(bad)}"
            problems.append(f"kdchain sweep: --set-grid {where}: {line}")
    return problems


def plan_sweep(sweep: SweepSpec) -> list[SweepJob]:
    """Every chain of the sweep, each spec loaded through the same `--set` path as `kdchain run` and checked like
    it; SpecError with one line per problem (the base config's, a grid key's or value's, a combination's)
    before anything runs."""
    check_chain(load_spec(sweep.config, sweep.sets), source=sweep.config)
    problems = _single_value_problems(sweep)
    if problems:
        raise SpecError(problems)
    jobs = []
    for point, (label, overrides) in enumerate(grid_points(sweep.grid)):
        for seed in sweep.seeds:
            try:
                spec = load_spec(sweep.config, [*sweep.sets, *overrides, f"seed={seed}"])
                check_chain(spec, source=sweep.config)
            except SpecError as e:
                problems += [f"kdchain sweep: --set-grid {label}: {line}" for line in e.lines
                             if f"kdchain sweep: --set-grid {label}: {line}" not in problems]
                continue
            jobs.append(SweepJob(point=point, label=label, seed=seed, spec=spec))
    if problems:
        raise SpecError(problems)
    return jobs


# ---------------------------------------------------------------------------------------------- the summary


def summarize(outcomes: list[ChainOutcome]) -> list[SummaryRow]:
    """One row per grid point and generation (teacher first, in chain order), accuracies by seed; a grid point
    whose chains all failed is one row, generation `-`."""
    rows: dict[tuple[int, str], SummaryRow] = {}
    labels = {o.point: o.label for o in outcomes}
    for o in sorted(outcomes, key=lambda o: (o.point, o.seed)):
        for g in o.generations:
            row = rows.setdefault((o.point, g["name"]), SummaryRow(point=o.point, label=o.label,
                                                                   generation=g["name"], architecture=g["summary"]))
            row.accuracy[o.seed] = g["test_accuracy"]
            row.params = g["params"] if row.params is None else row.params
    for o in (o for o in outcomes if o.status != "FINISHED"):
        if not any(p == o.point for p, _ in rows):  # no chain of this grid point finished
            rows[(o.point, "-")] = SummaryRow(point=o.point, label=labels[o.point], generation="-")
        for r in (r for (p, _), r in rows.items() if p == o.point):
            r.failed = sorted({*r.failed, o.seed})
    return [rows[k] for k in sorted(rows, key=lambda k: (k[0], _order(outcomes, k)))]


def _order(outcomes: list[ChainOutcome], key: tuple[int, str]) -> int:
    """A generation's place in its chain (the order of the first finished chain of that grid point)."""
    for o in outcomes:
        names = [g["name"] for g in o.generations]
        if o.point == key[0] and key[1] in names:
            return names.index(key[1])
    return -1


def summary_records(rows: list[SummaryRow], seeds: list[int]) -> list[dict]:
    """The summary as plain records (an MLflow or Prefect table, markdown, JSON): figures rounded to 4 digits."""
    out = []
    for r in rows:
        rec = {"grid point": r.label, "generation": r.generation, "architecture": r.architecture,
               "params": r.params, "test_accuracy_mean": _r4(r.mean), "test_accuracy_std": _r4(r.std),
               "chains": f"{len(r.accuracy)}/{len(r.accuracy) + len(r.failed)}", "status": r.status}
        rec |= {f"seed {s}": ("failed" if s in r.failed else _r4(r.accuracy.get(s))) for s in seeds}
        out.append(rec)
    return out


def _r4(v: float | None) -> float | None:
    return None if v is None else round(v, 4)
