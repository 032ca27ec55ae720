"""Where MLflow records a chain, and when a retrained model replaces the champion."""

from typing import Literal

from pydantic import Field

from kdchain.spec.base import Strict


class TrackingSpec(Strict):
    uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///mlruns/mlflow.db")
    experiment: str | None = Field(None, description="MLflow experiment; default: the chain's name")
    register_as: str | None = Field(None, description="registered model of the last generation; default <name>-student")
    ui_url: str | None = Field(None, description="base URL of the MLflow UI that links (Prefect artifacts) point to; "
                               "default: the tracking URI when it is http(s), else http://127.0.0.1:5000 (`kdchain ui`)",
                               pattern=r"^https?://")


class PromotionSpec(Strict):
    """When a retrained model replaces the `champion` (see flows/retrain.py)."""

    min_gain: float = Field(0.005, ge=0.0, le=1.0, description=(
        "test accuracy the newcomer must gain over the champion, on the same current test split (0.01 = 1 point)"))
    max_latency_ms: float | None = Field(None, gt=0.0, description="budget: batch-1 CPU latency in ms; null = none")
    max_size_bytes: int | None = Field(None, gt=0, description="budget: size of the saved weights in bytes; null = none")
    metric: Literal["test_accuracy", "test_accuracy_int8"] = Field(
        "test_accuracy", description="the accuracy compared: fp32, or that of the int8 ONNX model that is shipped "
                                     "(quantized as the last generation's deploy says; static when it says none)")
    max_latency_ms_int8: float | None = Field(None, gt=0.0, description="budget: batch-1 CPU latency of the int8 "
                                                                        "ONNX model in ms; null = none")
    max_size_bytes_int8: int | None = Field(None, gt=0, description="budget: size of the int8 ONNX file in bytes; "
                                                                    "null = none")

    @property
    def needs_int8(self) -> bool:
        return (self.metric == "test_accuracy_int8" or self.max_latency_ms_int8 is not None
                or self.max_size_bytes_int8 is not None)
