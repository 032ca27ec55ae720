"""Export to ONNX, check it against torch, and time both: torch eager and ONNX Runtime, batch 1 and batch 64.

Pure torch/onnxruntime; kdchain.tracking logs what this returns. Timings run on `threads` CPU threads (1 by default:
a deployment box running one model per core), after a warm-up, as medians.
"""

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdchain.measure.profile import latency_ms, median_seconds

# tolerance of ONNX Runtime's logits against torch's: MAX_REL_DIFF of the logits' scale (their largest magnitude),
# never below MAX_ABS_DIFF. float32 rounding grows with the values: a ResNet-56 with logits in the hundreds differs
# by ~4e-4 with a faithful graph, while a wrong graph differs by the order of the logits themselves.
MAX_ABS_DIFF = 1e-4
MAX_REL_DIFF = 1e-4


class ExportMismatch(RuntimeError):
    """The exported model disagrees with torch by more than the tolerance; `diff` and `tolerance` say by how much."""

    def __init__(self, message: str, diff: float, tolerance: float):
        super().__init__(message)
        self.diff, self.tolerance = diff, tolerance


@dataclass
class Speed:
    latency_ms: float  # torch eager, batch 1, median
    latency_ms_onnx: float  # ONNX Runtime, batch 1, median
    throughput_ips: float  # torch eager, batch 64, images per second
    throughput_ips_onnx: float  # ONNX Runtime, batch 64, images per second

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> Path:
    """Write `model` (a CPU copy in eval mode) to `path` with a dynamic batch dimension: input x, output logits."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, *input_shape)
    # the TorchScript exporter: about 0.3 s a model here, against 6-13 s for the dynamo exporter, same graph
    torch.onnx.export(cpu, (example,), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False, opset_version=17)
    return path


def ort_session(path: Path, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_onnx(model: nn.Module, path: Path, x: torch.Tensor) -> float:
    """Max absolute difference of the logits, ONNX Runtime against torch, on the batch `x`; raises ExportMismatch
    past the tolerance (MAX_REL_DIFF of the logits' scale, at least MAX_ABS_DIFF)."""
    cpu = copy.deepcopy(model).cpu().eval()
    with torch.inference_mode():
        expected = cpu(x.cpu().contiguous()).numpy()
    got = ort_session(path).run(["logits"], {"x": x.cpu().contiguous().numpy()})[0]
    diff = float(np.abs(got - expected).max())
    tolerance = max(MAX_ABS_DIFF, MAX_REL_DIFF * float(np.abs(expected).max()))
    if not diff <= tolerance:
        raise ExportMismatch(f"ONNX export of {path.name} differs from torch by {diff:.2e} (> {tolerance:.2e}, "
                             f"{MAX_REL_DIFF:g} of the logits' scale)", diff, tolerance)
    return diff


def measure_speed(model: nn.Module, path: Path, input_shape: tuple[int, ...], threads: int = 1,
                  runs: int = 30, warmup: int = 5, eager_latency_ms: float | None = None) -> Speed:
    """Torch eager and ONNX Runtime on the same inputs: median batch-1 latency, batch-64 throughput.
    `eager_latency_ms`: the eager batch-1 latency when the caller has just measured it (kdchain.measure.profile)."""
    cpu = copy.deepcopy(model).cpu().eval()
    session = ort_session(path, threads)
    x64 = torch.randn(64, *input_shape)
    n1, n64 = torch.randn(1, *input_shape).numpy(), x64.numpy()
    if eager_latency_ms is None:
        eager_latency_ms = latency_ms(cpu, input_shape, runs, warmup, threads)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            t64 = median_seconds(lambda: cpu(x64), max(5, runs // 5), max(2, warmup // 5))
    finally:
        torch.set_num_threads(old)
    o1 = median_seconds(lambda: session.run(["logits"], {"x": n1}), runs, warmup)
    o64 = median_seconds(lambda: session.run(["logits"], {"x": n64}), max(5, runs // 5), max(2, warmup // 5))
    return Speed(latency_ms=eager_latency_ms, latency_ms_onnx=o1 * 1000, throughput_ips=64 / t64,
                 throughput_ips_onnx=64 / o64)


def export_and_measure(model: nn.Module, input_shape: tuple[int, ...], path: Path, check_x: torch.Tensor,
                       threads: int = 1, eager_latency_ms: float | None = None) -> dict[str, float]:
    """Export, check on `check_x` (raises ExportMismatch), time; returns the metrics to log."""
    export_onnx(model, input_shape, path)
    diff = check_onnx(model, path, check_x)
    return {"onnx_max_abs_diff": diff,
            **measure_speed(model, path, input_shape, threads, eager_latency_ms=eager_latency_ms).as_dict()}


def label_onnx(path: Path, class_names: list[str]) -> None:
    """Store the outputs' class names in the ONNX file's metadata (key "class_names", a JSON list); ONNX Runtime
    reads them back with session.get_modelmeta().custom_metadata_map."""
    import json

    import onnx

    model = onnx.load(str(path))
    for i in reversed(range(len(model.metadata_props))):  # a rewrite replaces, never duplicates
        if model.metadata_props[i].key == "class_names":
            del model.metadata_props[i]
    model.metadata_props.add(key="class_names", value=json.dumps(list(class_names)))
    onnx.save(model, str(path))
