"""A generation's int8 model, bounded: ONNX Runtime's int8 file (kdchain.measure.quantize), and when it loses more
than `deploy.max_drop` points on the validation split, the operators whose quantization costs the most kept in
float32 (ONNX Runtime's nodes_to_exclude), fewest first, until the loss is within the bound or
`deploy.max_float_nodes` are float. This is Intel Neural Compressor's accuracy-driven tuning (`tolerable_loss`):
one node at a time in float gives each node's sensitivity, then the most sensitive fall back greedily. Choices are
made on the validation split (calibration on training images); the test split only scores the result.
"""

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from kdchain.measure.quantize import float_ops, onnx_accuracy, onnx_speed, quantize_onnx, quantizable_nodes

Batches = Sequence[tuple[np.ndarray, np.ndarray]]  # (x (N, C, H, W) float32, y (N,)) batches, read more than once


@dataclass
class Int8Result:
    path: Path
    metrics: dict[str, float]  # test_accuracy_int8, latency_ms_int8, throughput_ips_int8, size_bytes_int8, ...
    float_ops: dict[str, int] = field(default_factory=dict)  # op type -> nodes that still compute in float
    flagged: bool = False  # test accuracy still more than max_drop points below fp32
    float_nodes: list[str] = field(default_factory=list)  # nodes kept float32 to hold max_drop

    def float_ops_text(self) -> str:
        return ", ".join(f"{op} x{n}" for op, n in sorted(self.float_ops.items())) or "none"


@dataclass
class Fallback:
    float_nodes: list[str]  # kept float32, most sensitive first
    val_accuracy_ptq: float  # every node int8
    val_accuracy: float  # with float_nodes in float32
    sensitivity: dict[str, float] = field(default_factory=dict)  # node -> val accuracy with it alone in float32
    plain: Path | None = None  # a copy of the every-node-int8 file when nodes stay float (the caller removes it)


def bounded_quantize(fp32: Path, out: Path, deploy, calibration: np.ndarray | None, val: Batches,
                     fp32_val_accuracy: float) -> Fallback:
    """Write `out` as quantize_onnx does; past `deploy.max_drop` points below `fp32_val_accuracy` on `val`, keep
    the most sensitive nodes in float32, fewest first, up to `deploy.max_float_nodes`. `out` ends as the most
    accurate file tried (the first within the bound)."""
    def accuracy(nodes: list[str]) -> float:
        quantize_onnx(fp32, out, deploy.quantize, calibration, deploy.quant_format, deploy.first_conv, nodes)
        return onnx_accuracy(out, val)

    def within(acc: float) -> bool:
        return (fp32_val_accuracy - acc) * 100 <= deploy.max_drop

    ptq = accuracy([])
    result = Fallback([], ptq, ptq)
    if within(ptq) or deploy.max_float_nodes == 0:
        return result
    result.plain = shutil.copyfile(out, Path(out).with_suffix(".ptq.onnx"))
    for node in quantizable_nodes(fp32, deploy.quantize, deploy.first_conv):  # each node's sensitivity
        result.sensitivity[node] = acc = accuracy([node])
        if within(acc):  # one float node holds the bound: none can do with fewer
            result.float_nodes, result.val_accuracy = [node], acc
            return result
    ranked = sorted(result.sensitivity, key=lambda n: -result.sensitivity[n])  # stable: graph order among equals
    if ranked and result.sensitivity[ranked[0]] > ptq:
        result.float_nodes, result.val_accuracy = ranked[:1], result.sensitivity[ranked[0]]
    tried = ranked[-1:]  # the file `out` holds now
    for k in range(2, min(deploy.max_float_nodes, len(ranked)) + 1):
        tried = ranked[:k]
        acc = accuracy(tried)
        if acc > result.val_accuracy:
            result.float_nodes, result.val_accuracy = tried, acc
        if within(acc):
            break
    if tried != result.float_nodes:  # `out` must be the file chosen, not the last one tried
        accuracy(result.float_nodes)
    return result


def int8_generation(fp32: Path, deploy, calibration: np.ndarray | None, test: Batches, input_shape: tuple[int, ...],
                    fp32_accuracy: float, val: Batches = (), threads: int = 1) -> Int8Result:
    """Quantize `fp32` (model.onnx) to model.int8.onnx beside it as `deploy` (a DeploySpec) says, bounded on `val`
    (none: plain int8), then score and time it; flagged past deploy.max_drop points below `fp32_accuracy` on test.
    With float nodes, the plain int8 file's test accuracy and latency are recorded beside (the `_ptq` metrics)."""
    path = Path(fp32).with_suffix(".int8.onnx")
    fallback = None
    if val and deploy.max_float_nodes:
        fallback = bounded_quantize(fp32, path, deploy, calibration, val, onnx_accuracy(fp32, val, threads))
    else:
        quantize_onnx(fp32, path, deploy.quantize, calibration, deploy.quant_format, deploy.first_conv)
    metrics = score_int8(path, test, input_shape, threads)
    metrics["size_bytes_onnx"] = float(Path(fp32).stat().st_size)
    metrics["accuracy_drop_int8"] = drop = (fp32_accuracy - metrics["test_accuracy_int8"]) * 100
    metrics["int8_over_max_drop"] = float(drop > deploy.max_drop)
    nodes = fallback.float_nodes if fallback else []
    if fallback:
        metrics.update(val_accuracy_int8_ptq=fallback.val_accuracy_ptq, val_accuracy_int8=fallback.val_accuracy,
                       int8_float_nodes=float(len(nodes)))
    if nodes:  # what keeping them float bought and cost: the plain int8 file scored the same way
        metrics.update({f"{k}_ptq": v for k, v in score_int8(fallback.plain, test, input_shape, threads).items()})
    if fallback and fallback.plain:
        fallback.plain.unlink(missing_ok=True)
    return Int8Result(path, metrics, float_ops(path), drop > deploy.max_drop, nodes)


def score_int8(path: Path, test: Batches, input_shape: tuple[int, ...], threads: int) -> dict[str, float]:
    latency, throughput = onnx_speed(path, input_shape, threads)
    return {"test_accuracy_int8": onnx_accuracy(path, test, threads), "latency_ms_int8": latency,
            "throughput_ips_int8": throughput, "size_bytes_int8": float(path.stat().st_size)}


def numpy_batches(split) -> Batches:
    """A split as ONNX Runtime scores it: (images, labels) numpy batches of 256, in order."""
    from kdchain.data import batches

    return [(x.cpu().numpy(), y.cpu().numpy()) for x, y in batches(split, 256, shuffle=False)]
