"""How a generation is shipped: its ONNX file, and optionally an int8 version of it (ONNX Runtime quantization)."""

from typing import Literal

from pydantic import Field, model_serializer

from kdchain.spec.base import Strict


class DeploySpec(Strict):
    """`deploy: {quantize: static}` on the chain (every generation) or on one generation (overrides the chain's)."""

    quantize: Literal["none", "dynamic", "static", "qat"] = Field(
        "none", description="none: fp32 ONNX only; static: ONNX Runtime int8 (per-channel weights) calibrated on "
                            "training images; dynamic: int8 weights, activations quantized at run time "
                            "(for models without convolutions); qat: the trained generation fine-tuned for "
                            "qat_epochs with fake quantization (its own loss against its teacher's fp32 "
                            "outputs), shipped as the QDQ int8 model it trained as")
    quant_format: Literal["qoperator", "qdq"] = Field(
        "qoperator", description="static: qoperator writes ONNX Runtime's integer operators (QLinearConv, QGemm: "
                                 "one node each, the smallest file); qdq keeps float operators between "
                                 "QuantizeLinear/DequantizeLinear pairs (portable to other runtimes, which fuse "
                                 "them; 3x the nodes: the digits C's file is 0.40 of fp32 instead of 0.33)")
    first_conv: Literal["float", "int8"] = Field(
        "float", description="static and qat: float keeps the first convolution (1-3 input channels at full "
                             "resolution) in float32, where ONNX Runtime's int8 kernels are slower than its float "
                             "ones (the digits C's batch-64 throughput: 1.1x fp32 with it float, 0.5x in int8)")
    calibration_images: int = Field(512, ge=1, description="static: training images (a seeded sample) that "
                                                           "calibrate the activation ranges")
    format: Literal["onnx"] = Field("onnx", description="the file format shipped (ONNX, opset 17)")
    max_drop: float = Field(1.0, ge=0.0, le=100.0, description="points of accuracy the int8 model may lose against "
                                                               "fp32: past it on the validation split, the most "
                                                               "sensitive operators stay float32 (max_float_nodes); "
                                                               "past it on the test split, the model is flagged")
    max_float_nodes: int = Field(4, ge=0, description="operators (Conv, Gemm, MatMul) the int8 model may keep in "
                                                      "float32 to stay within max_drop, most sensitive first; "
                                                      "0: plain int8, only flagged")

    qat_epochs: int = Field(2, ge=1, description="qat: epochs of quantization-aware fine-tuning after training")
    qat_lr: float | None = Field(None, gt=0.0, description="qat: peak learning rate of the fine-tuning; default a "
                                                           "tenth of the generation's train.lr")

    @model_serializer(mode="wrap")
    def _qat_left_out(self, handler):
        # the qat settings are dumped only with quantize: qat, so that the keys of other generations stay as they were
        data = handler(self)
        if isinstance(data, dict) and self.quantize != "qat":
            data.pop("qat_epochs", None)
            data.pop("qat_lr", None)
        return data

    @property
    def quantized(self) -> bool:
        return self.quantize != "none"
