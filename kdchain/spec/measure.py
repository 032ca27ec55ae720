"""What is measured after a generation trains, besides accuracy and size: ONNX export and speed, on a budget."""

from pydantic import Field

from kdchain.spec.base import Strict


class MeasureSpec(Strict):
    """Every timed figure stops at `runs` runs or `budget_s` seconds, whichever comes first, so a slow model (VGG19
    at 224x224, about 1 s an image on a busy CPU) costs seconds while a small one gets its full `runs`."""

    onnx: bool = Field(True, description="export each generation to ONNX, check it against torch and time it; "
                                         "false = no ONNX export, no ONNX figures")
    keep_onnx: bool = Field(False, description="keep the checked ONNX file beside the checkpoint (model.onnx) and "
                                               "log it to MLflow (onnx/model.onnx): two more copies of the weights; "
                                               "false = it is removed once measured (and quantized from), so each "
                                               "generation's weights are stored twice (workdir model.pt, MLflow "
                                               "logged model) and `kdchain export` makes the ONNX files to ship "
                                               "from the logged model")
    speed: bool = Field(True, description="time torch eager (and ONNX Runtime, with onnx) at batch 1 and at a "
                                          "throughput batch; false = only the batch-1 eager latency of the profile")
    runs: int = Field(30, ge=1, description="timed runs per figure, at most (after a few untimed warm-up runs)")
    budget_s: float = Field(10.0, gt=0.0, description="seconds per timed figure, at most, warm-up included; the "
                                                      "throughput batch (64) and the ONNX check batch (256) shrink "
                                                      "to fit it")
