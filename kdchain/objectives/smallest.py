"""`smallest`: the fewest parameters that keep a share of the teacher's accuracy."""

from typing import Literal

from pydantic import Field

from kdchain.spec.kinds import OBJECTIVES
from kdchain.spec.objective import Objective, most_accurate


@OBJECTIVES.register
class SmallestRetaining(Objective):
    """Fewest params among the trials whose proxy val accuracy retains `retention` of the teacher's; the most
    accurate when none does."""

    kind: Literal["smallest"] = "smallest"
    retention: float = Field(0.98, gt=0.0, le=1.5, description="least proxy val accuracy / the teacher's val accuracy")

    def select(self, done: list, teacher_val_accuracy: float) -> tuple[int, str]:
        r = self.retention
        keep = [t for t in done if t.val_accuracy >= r * teacher_val_accuracy]
        if not keep:
            return most_accurate(done).number, f"no trial retained {r} of the teacher's val accuracy; the most accurate instead"
        win = min(keep, key=lambda t: (t.cost["params"], -t.val_accuracy))
        return win.number, (f"fewest params ({win.cost['params']:,.0f}) with val accuracy {win.val_accuracy:.4f} "
                            f">= {r} x teacher {teacher_val_accuracy:.4f}")
