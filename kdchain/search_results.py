"""What a search records and how it picks: candidates, trial results, the search's result, and the winner by the
objective (best accuracy, smallest retaining, the Pareto front, the knee within `max_drop` of the best)."""

from pathlib import Path

from pydantic import BaseModel

from kdchain.spec import SearchSpec


class Candidate(BaseModel):
    """One point of the space, with what it costs (measured on the built model, untrained)."""

    params: dict[str, float]  # {"width": 0.5, "depth": 1.0, ...}: the axes this search varies
    arch: dict  # the resolved Arch spec (JSON)
    summary: str
    cost: dict[str, float]  # params, flops, latency_ms
    over_budget: list[str] = []  # "params 12,345 > 10,000", ... ; empty = within budget


class TrialResult(BaseModel):
    number: int
    params: dict[str, float]
    summary: str
    arch: dict
    state: str  # "complete" | "pruned"
    val_accuracy: float
    epochs: int  # epochs trained before completing or being pruned
    cost: dict[str, float]
    worker: str  # host:pid of the process that trained it
    seconds: float
    mlflow_run_id: str | None = None


class SearchResult(BaseModel):
    generation: int
    trials: list[TrialResult]
    winner: int  # trial number
    front: list[int]  # trial numbers on the accuracy/params Pareto front
    reason: str
    candidates: int  # candidates within budget
    plot: str | None = None  # PNG path
    floor: float | None = None  # knee: the least val accuracy the winner could have (drawn on the plot)
    mlflow_run_id: str | None = None

    def winning(self) -> TrialResult:
        return next(t for t in self.trials if t.number == self.winner)


def pareto_front(trials: list[TrialResult]) -> list[int]:
    """Trial numbers no other completed trial beats on both accuracy (higher) and params (lower)."""
    done = [t for t in trials if t.state == "complete"]
    front = []
    for t in done:
        dominated = any(o.val_accuracy >= t.val_accuracy and o.cost["params"] <= t.cost["params"]
                        and (o.val_accuracy > t.val_accuracy or o.cost["params"] < t.cost["params"]) for o in done)
        if not dominated:
            front.append(t.number)
    return sorted(front)


def knee_floor(search: SearchSpec, trials: list[TrialResult]) -> float | None:
    """The least proxy val accuracy the winner may have (knee: the best trial's less max_drop points), or None."""
    return search.objective.floor([t for t in trials if t.state == "complete"])


def select_winner(search: SearchSpec, trials: list[TrialResult], teacher_val_accuracy: float) -> tuple[int, str]:
    """(trial number, why), as the search's objective picks (kdchain/objectives/)."""
    done = [t for t in trials if t.state == "complete"]
    if not done:
        raise RuntimeError("every trial was pruned; raise proxy_epochs or set search.prune: false")
    return search.objective.select(done, teacher_val_accuracy)


def pareto_plot(result: SearchResult, path: Path, title: str) -> Path:
    """accuracy vs params and vs latency (when measured), every trial, the front joined, the winner starred."""
    from kdchain.measure.plots import search_trials

    path.parent.mkdir(parents=True, exist_ok=True)
    search_trials(result, title).savefig(path, dpi=100)
    return path
