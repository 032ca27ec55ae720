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
    """knee: the least proxy val accuracy the winner may have (the best trial's less max_drop points)."""
    done = [t.val_accuracy for t in trials if t.state == "complete"]
    if search.objective.kind != "knee" or not done:
        return None
    return max(done) - search.objective.max_drop / 100


def select_winner(search: SearchSpec, trials: list[TrialResult], teacher_val_accuracy: float) -> tuple[int, str]:
    """(trial number, why). accuracy and pareto: the most accurate (fewer params on a tie; for pareto that is the
    accurate end of the front); smallest: fewest params among those retaining r of the teacher's val accuracy;
    knee: fewest params among those within max_drop points of the most accurate."""
    done = [t for t in trials if t.state == "complete"]
    if not done:
        raise RuntimeError("every trial was pruned; raise proxy_epochs or set search.prune: false")
    best = min(done, key=lambda t: (-t.val_accuracy, t.cost["params"]))
    if search.objective.kind == "smallest":
        r = search.objective.retention
        keep = [t for t in done if t.val_accuracy >= r * teacher_val_accuracy]
        if keep:
            win = min(keep, key=lambda t: (t.cost["params"], -t.val_accuracy))
            return win.number, (f"fewest params ({win.cost['params']:,.0f}) with val accuracy {win.val_accuracy:.4f} "
                                f">= {r} x teacher {teacher_val_accuracy:.4f}")
        return best.number, f"no trial retained {r} of the teacher's val accuracy; the most accurate instead"
    if search.objective.kind == "knee":
        floor = knee_floor(search, trials)
        win = min((t for t in done if t.val_accuracy >= floor), key=lambda t: (t.cost["params"], -t.val_accuracy))
        return win.number, (f"fewest params ({win.cost['params']:,.0f}) with val accuracy {win.val_accuracy:.4f}, "
                            f"within {search.objective.max_drop:g} points of the best {best.val_accuracy:.4f} "
                            f"({best.cost['params']:,.0f} params)")
    return best.number, f"highest proxy val accuracy {best.val_accuracy:.4f} within budget"


def pareto_plot(result: SearchResult, path: Path, title: str) -> Path:
    """accuracy vs params and vs latency (when measured), every trial, the front joined, the winner starred."""
    from kdchain.measure.plots import search_trials

    path.parent.mkdir(parents=True, exist_ok=True)
    search_trials(result, title).savefig(path, dpi=100)
    return path
