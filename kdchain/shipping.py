"""What a generation ships: its ONNX file, checked against torch and timed, and its int8 model (`deploy.quantize`)
scored on the test split beside it."""

import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from kdchain.data import batches
from kdchain.measure.export import ExportMismatch, export_and_measure, export_onnx, label_onnx
from kdchain.measure.int8 import Int8Result, int8_generation, numpy_batches, score_int8
from kdchain.resolve import ResolvedGeneration, resolve_chain
from kdchain.spec import ChainSpec, DeploySpec


def export_checked(model: nn.Module, input_shape, path: Path, check_x: torch.Tensor, eager_latency_ms: float,
                   metrics: dict[str, float], measure: dict | None = None) -> str:
    """ONNX beside the checkpoint, checked against torch on the test batch `check_x` and timed against torch eager
    (whose batch-1 latency the profile has just measured); adds its metrics to `metrics`. On a real mismatch the
    ONNX file is removed (nobody should deploy it), its difference still recorded, and the warning returned: the
    trained generation itself stays good. Returns "" when the export checks out."""
    try:
        metrics.update(export_and_measure(model, input_shape, path, check_x, eager_latency_ms=eager_latency_ms,
                                          **(measure or {})))  # `measure:` of the chain: onnx and speed on or off, budget
        if getattr(model, "class_names", None) and Path(path).is_file():
            label_onnx(path, model.class_names)
        return ""
    except ExportMismatch as e:
        Path(path).unlink(missing_ok=True)
        metrics["onnx_max_abs_diff"] = e.diff
        return f"{e}; the ONNX file is left out"


def ship_int8(spec: ChainSpec, gen: ResolvedGeneration, student: nn.Module, teacher: nn.Module | None, data,
              onnx_path: Path, fp32_accuracy: float) -> Int8Result | None:
    """The int8 model a trained generation ships (`deploy.quantize`): quantized from its ONNX file (static,
    dynamic), or fine-tuned with fake quantization and exported (qat: kdchain.qat); None without."""
    if gen.deploy.quantize != "qat":
        return quantize_generation(spec, gen, data, onnx_path, fp32_accuracy)
    from kdchain.qat import qat_generation

    int8 = qat_generation(spec, gen, student, teacher, data, Path(onnx_path).with_suffix(".int8.onnx"),
                          fp32_accuracy)
    int8.metrics["size_bytes_onnx"] = float(Path(onnx_path).stat().st_size)
    return int8


def quantize_generation(spec: ChainSpec, gen: ResolvedGeneration, data, onnx_path: Path,
                        fp32_accuracy: float) -> Int8Result | None:
    """The int8 ONNX beside the fp32 one (`deploy.quantize`), scored on the test split and timed; None without.
    qat needs training: here (kdchain export, a promotion's scores) it is static quantization with its settings."""
    deploy = gen.deploy
    if not deploy.quantized:
        return None
    if deploy.quantize == "qat":
        deploy = deploy.model_copy(update={"quantize": "static"})
    calibration = None
    if deploy.quantize == "static":  # a seeded sample of the training split, normalised as the model sees it
        sample = torch.Generator().manual_seed(spec.seed)
        calibration = next(batches(data.train, deploy.calibration_images, sample))[0].cpu().numpy()
    test, val = numpy_batches(data.test), numpy_batches(data.val)
    return int8_generation(onnx_path, deploy, calibration, test, data.input_shape, fp32_accuracy, val)


def int8_tags(int8: Int8Result, max_drop: float) -> dict[str, str]:
    tags = {"kdchain.int8.float_ops": int8.float_ops_text()}
    if int8.float_nodes:  # kept float32 to hold max_drop on the validation split
        tags["kdchain.int8.float_nodes"] = ", ".join(int8.float_nodes)
    if int8.flagged:
        tags["kdchain.int8.flag"] = (f"int8 test accuracy {int8.metrics['accuracy_drop_int8']:.2f} points below "
                                     f"fp32 (max_drop {max_drop:g})")
    return tags


def file_int8_scores(path: Path, data) -> dict[str, float]:
    """An int8 ONNX file as it is (the one a run shipped), scored on the test split and timed like the chain does."""
    return score_int8(Path(path), numpy_batches(data.test), data.input_shape, threads=1)


def int8_scores(spec: ChainSpec, model: nn.Module, data, fp32_accuracy: float) -> dict[str, float]:
    """The int8 ONNX model a chain ships from `model`, quantized as its last generation's `deploy` says (static
    when that says none), scored on the test split and timed."""
    gen = resolve_chain(spec)[-1]
    if not gen.deploy.quantized:
        gen = replace(gen, deploy=DeploySpec(quantize="static"))
    with tempfile.TemporaryDirectory() as tmp:
        onnx = export_onnx(model, data.input_shape, Path(tmp) / "model.onnx")
        if getattr(model, "class_names", None):  # the same file the chain ships: its outputs named
            label_onnx(onnx, model.class_names)
        result = quantize_generation(spec, gen, data, onnx, fp32_accuracy)
    return {k: result.metrics[k] for k in ("test_accuracy_int8", "latency_ms_int8", "throughput_ips_int8",
                                           "size_bytes_int8")}
