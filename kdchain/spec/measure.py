"""What is measured after a generation trains, besides accuracy and size: ONNX export and speed, on a budget."""

from pydantic import Field

from kdchain.spec.base import Strict


class MeasureSpec(Strict):
    """Every timed figure stops at `runs` runs or `budget_s` seconds, whichever comes first, so a slow model (VGG19
    at 224x224, about 1 s an image on a busy CPU) costs seconds while a small one gets its full `runs`."""

    onnx: bool = Field(True, description="export each generation to ONNX beside its checkpoint, check it against "
                                         "torch and log it to MLflow; false = no ONNX file, no ONNX figures")
    speed: bool = Field(True, description="time torch eager (and ONNX Runtime, with onnx) at batch 1 and at a "
                                          "throughput batch; false = only the batch-1 eager latency of the profile")
    runs: int = Field(30, ge=1, description="timed runs per figure, at most (after a few untimed warm-up runs)")
    budget_s: float = Field(10.0, gt=0.0, description="seconds per timed figure, at most, warm-up included; the "
                                                      "throughput batch (64) and the ONNX check batch (256) shrink "
                                                      "to fit it")
