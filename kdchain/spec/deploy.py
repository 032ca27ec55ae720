"""How a generation is shipped: its ONNX file, and optionally an int8 version of it (ONNX Runtime quantization)."""

from typing import Literal

from pydantic import Field

from kdchain.spec.base import Strict


class DeploySpec(Strict):
    """`deploy: {quantize: static}` on the chain (every generation) or on one generation (overrides the chain's)."""

    quantize: Literal["none", "dynamic", "static"] = Field(
        "none", description="none: fp32 ONNX only; static: ONNX Runtime int8 (QDQ, per-channel weights) calibrated "
                            "on training images; dynamic: int8 weights, activations quantized at run time "
                            "(for models without convolutions)")
    calibration_images: int = Field(512, ge=1, description="static: training images (a seeded sample) that "
                                                           "calibrate the activation ranges")
    format: Literal["onnx"] = Field("onnx", description="the file format shipped (ONNX, opset 17)")
    max_drop: float = Field(1.0, ge=0.0, le=100.0, description="points of test accuracy the int8 model may lose "
                                                               "against fp32 before it is flagged")

    @property
    def quantized(self) -> bool:
        return self.quantize != "none"
