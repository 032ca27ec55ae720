"""`pareto`: the accuracy-params front, explored by a two-objective sampler; its most accurate end wins."""

from typing import ClassVar, Literal

from kdchain.spec.kinds import OBJECTIVES
from kdchain.spec.objective import Objective, most_accurate


@OBJECTIVES.register
class ParetoFront(Objective):
    """The sampler explores accuracy and params both; the most accurate trial on the front wins."""

    front: ClassVar[bool] = True
    kind: Literal["pareto"] = "pareto"

    def select(self, done: list, teacher_val_accuracy: float) -> tuple[int, str]:
        best = most_accurate(done)
        return best.number, f"highest proxy val accuracy {best.val_accuracy:.4f} within budget"
