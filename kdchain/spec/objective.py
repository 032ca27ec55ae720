"""What every search objective is: how a search picks its winner from the trials it ran. The objectives are
modules of kdchain/objectives/, registered in kdchain.spec.kinds.OBJECTIVES; their union is built in
kdchain.spec.unions."""

from typing import ClassVar

from kdchain.spec.base import Strict


class Objective(Strict):
    """`select` picks from the completed trials (kdchain.search_results.TrialResult: number, val_accuracy,
    cost["params"], ...). `front`: the sampler explores accuracy and params both (a two-objective study, which
    Optuna does not prune)."""

    front: ClassVar[bool] = False

    kind: str

    def select(self, done: list, teacher_val_accuracy: float) -> tuple[int, str]:
        """(the winning trial's number, why), from the completed trials (at least one)."""
        raise NotImplementedError(f"objective kind {self.kind!r} defines no select()")

    def floor(self, done: list) -> float | None:
        """The least proxy val accuracy the winner may have, drawn on the search's plot; None: no such line."""
        return None


def most_accurate(done: list):
    """The most accurate completed trial, the one with fewer params on a tie."""
    return min(done, key=lambda t: (-t.val_accuracy, t.cost["params"]))
