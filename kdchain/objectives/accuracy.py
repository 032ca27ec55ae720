"""`accuracy`: the most accurate trial within budget."""

from typing import Literal

from kdchain.spec.kinds import OBJECTIVES
from kdchain.spec.objective import Objective, most_accurate


@OBJECTIVES.register
class BestAccuracy(Objective):
    """The highest proxy val accuracy (fewer params on a tie)."""

    kind: Literal["accuracy"] = "accuracy"

    def select(self, done: list, teacher_val_accuracy: float) -> tuple[int, str]:
        best = most_accurate(done)
        return best.number, f"highest proxy val accuracy {best.val_accuracy:.4f} within budget"
