"""Loss terms of a generation, keyed by `kind`: labels (ce), logits (kd, dkd), feature maps (feature, fitnet, at, rkd)."""

from typing import Annotated, Literal, Union

from pydantic import Field

from kdchain.spec.base import Strict


class CeLoss(Strict):
    """Cross-entropy on the labels."""

    kind: Literal["ce"] = "ce"
    weight: float = Field(1.0, ge=0.0, description="weight of this term in the generation's loss")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="label smoothing of the cross-entropy")


class KdLoss(Strict):
    """Hinton et al. 2015: KL(softmax(t/T) || softmax(s/T)) * T^2."""

    kind: Literal["kd"] = "kd"
    weight: float = Field(1.0, ge=0.0, description="weight of this term in the generation's loss")
    temperature: float = Field(4.0, gt=0.0, description="softmax temperature T")


class FeatureLoss(Strict):
    """MSE between a teacher feature map and a student feature map (1x1-conv adapter and resize when they differ)."""

    kind: Literal["feature"] = "feature"
    weight: float = Field(1.0, ge=0.0, description="weight of this term in the generation's loss")
    teacher_node: str | None = Field(None, description="tapped node of the teacher; default: its last feature map")
    student_node: str | None = Field(None, description="tapped node of the student; default: its last feature map")


class FitnetLoss(Strict):
    """Romero et al. 2015 (FitNets): 0.5 * MSE between the teacher's hint layer and a conv regressor of the student's
    guided layer; the first `hint_epochs` epochs train on the hint alone (stage 1), then on the full loss."""

    kind: Literal["fitnet"] = "fitnet"
    weight: float = Field(1.0, ge=0.0, description="weight of this term in the generation's loss")
    teacher_node: str | None = Field(None, description="hint layer of the teacher; default: its last feature map")
    student_node: str | None = Field(None, description="guided layer of the student; default: its last feature map")
    hint_epochs: int = Field(0, ge=0, description="first epochs trained on the fitnet hint terms alone; 0 = none")


class AtLoss(Strict):
    """Zagoruyko & Komodakis 2017 (attention transfer): squared distance of L2-normalised spatial attention maps
    mean_c |A_c|^p of a teacher node and a student node."""

    kind: Literal["at"] = "at"
    weight: float = Field(500.0, ge=0.0, description="weight of this term (the paper's beta/2 = 1000/2)")
    p: float = Field(2.0, gt=0.0, description="exponent of the attention map mean_c |A_c|^p")
    teacher_node: str | None = Field(None, description="tapped node of the teacher; default: its last feature map")
    student_node: str | None = Field(None, description="tapped node of the student; default: its last feature map")


class DkdLoss(Strict):
    """Zhao et al. 2022 (decoupled KD): alpha * target-class KD + beta * non-target-class KD, both times T^2."""

    kind: Literal["dkd"] = "dkd"
    weight: float = Field(1.0, ge=0.0, description="weight of this term in the generation's loss")
    alpha: float = Field(1.0, ge=0.0, description="weight of TCKD (target vs. non-target probability)")
    beta: float = Field(8.0, ge=0.0, description="weight of NCKD (distribution among the non-target classes)")
    temperature: float = Field(4.0, gt=0.0, description="softmax temperature T")


class RkdLoss(Strict):
    """Park et al. 2019 (relational KD): smooth-L1 between the teacher's and the student's mean-normalised pairwise
    distances and triplet angles of penultimate embeddings (the node's map, globally average-pooled)."""

    kind: Literal["rkd"] = "rkd"
    weight: float = Field(1.0, ge=0.0, description="weight of this term in the generation's loss")
    distance_weight: float = Field(25.0, ge=0.0, description="weight of the distance term (paper: 25)")
    angle_weight: float = Field(50.0, ge=0.0, description="weight of the angle term (paper: 50)")
    teacher_node: str | None = Field(None, description="teacher node pooled into the embedding; default: last map")
    student_node: str | None = Field(None, description="student node pooled into the embedding; default: last map")


Loss = Annotated[Union[CeLoss, KdLoss, FeatureLoss, FitnetLoss, AtLoss, DkdLoss, RkdLoss],
                 Field(discriminator="kind")]
