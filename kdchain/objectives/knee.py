"""`knee`: the sweet spot a person picks on the accuracy-params front."""

from typing import ClassVar, Literal

from pydantic import Field

from kdchain.spec.kinds import OBJECTIVES
from kdchain.spec.objective import Objective, most_accurate


@OBJECTIVES.register
class Knee(Objective):
    """The sweet spot a person picks on the accuracy-params front: the smallest model whose proxy val accuracy is
    within `max_drop` points of the best trial's."""

    front: ClassVar[bool] = True
    kind: Literal["knee"] = "knee"
    max_drop: float = Field(1.0, ge=0.0, le=100.0, description="accuracy points (percent) below the best trial "
                                                               "that a smaller model may give up")

    def floor(self, done: list) -> float | None:
        return max(t.val_accuracy for t in done) - self.max_drop / 100 if done else None

    def select(self, done: list, teacher_val_accuracy: float) -> tuple[int, str]:
        best, floor = most_accurate(done), self.floor(done)
        win = min((t for t in done if t.val_accuracy >= floor), key=lambda t: (t.cost["params"], -t.val_accuracy))
        return win.number, (f"fewest params ({win.cost['params']:,.0f}) with val accuracy {win.val_accuracy:.4f}, "
                            f"within {self.max_drop:g} points of the best {best.val_accuracy:.4f} "
                            f"({best.cost['params']:,.0f} params)")
