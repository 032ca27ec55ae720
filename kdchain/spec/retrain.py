"""How `kdchain retrain` trains the family again: from the start (full) or from the champion family's weights (warm)."""

import math
from typing import Literal

from pydantic import Field

from kdchain.spec.base import Strict


class RetrainSpec(Strict):
    """`retrain: {mode: warm}`: each generation starts from the same generation of the champion's chain run, keeps
    its architecture (no pruning, no search) and trains a share of its epochs, distilled from its retrained teacher.
    Warm starts follow Ash & Adams (NeurIPS 2020), who also give the shrink-and-perturb remedy offered here."""

    mode: Literal["full", "warm"] = Field(
        "full", description="full: every generation trains from the start, as `kdchain run` does; warm: every "
        "generation starts from the champion family's weights (its architecture kept) and trains epochs_share of "
        "its epochs; with no champion yet, or one whose generations differ from the config's, the retrain is full")
    epochs_share: float = Field(0.25, gt=0.0, le=1.0, description=(
        "warm: each generation trains this share of its train.epochs (rounded up, at least 1); a generation's "
        "train.retrain_epochs overrides it"))
    shrink: float = Field(1.0, gt=0.0, le=1.0, description=(
        "warm: the teacher's starting weights are multiplied by this (shrink-and-perturb; 1.0 = unchanged)"))
    perturb: float = Field(0.0, ge=0.0, le=1.0, description=(
        "warm: this times a fresh initialisation is added to the teacher's shrunk weights (0.0 = none)"))

    def epochs(self, train) -> int:
        """Epochs a warm retrain trains a generation whose training is `train` (a TrainSpec)."""
        if train.retrain_epochs is not None:
            return train.retrain_epochs
        return max(1, math.ceil(train.epochs * self.epochs_share - 1e-9))  # 10 x 0.25 -> 3; 0.3 x 10 -> 3, not 4
