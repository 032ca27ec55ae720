"""What every loss term is: a weight, what it reads, and its value. The kinds (ce, kd, feature, ...) are modules of
kdchain/losses/, registered in kdchain.spec.kinds.LOSSES; their union `Loss` is built in kdchain.spec.unions."""

from typing import ClassVar

from pydantic import Field

from kdchain.spec.base import Strict

LOGITS = "logits"  # the outputs' key of the (direct) teacher's and the student's logits


class LossTerm(Strict):
    """A term of a generation's loss. A kind says what it needs on its class; DistillLoss and the chain read it:

    - teacher: it reads the teacher's outputs (a teacher runs, live, cached or from stored views);
    - logits: it compares logits, so with `teachers: ancestors` every earlier generation teaches it;
    - features: it reads the maps at `teacher_node` / `student_node` (default: each model's last feature map);
    - adapted: a module trained with the student maps its node's output to the teacher's (`adapter` makes it);
    - hint: it trains alone for its `hint_epochs` first (FitNets' stage 1);
    - labels: it reads the labels, so it sees only the labeled images of a batch that holds unlabeled ones too."""

    teacher: ClassVar[bool] = False
    logits: ClassVar[bool] = False
    features: ClassVar[bool] = False
    adapted: ClassVar[bool] = False
    hint: ClassVar[bool] = False
    labels: ClassVar[bool] = False

    kind: str
    weight: float = Field(1.0, ge=0.0, description="weight of this term in the generation's loss")

    def adapter(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]):
        """The module trained with the student that maps its node's output (of `student_shape`) to the teacher's."""
        return None

    def value(self, student_out: dict, teacher_out: dict | None, y, adapter=None):
        """The term's (unweighted) value: a scalar tensor."""
        raise NotImplementedError(f"loss kind {self.kind!r} defines no value()")
