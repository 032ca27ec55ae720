"""Export to ONNX, check it against torch, and time both: torch eager and ONNX Runtime, batch 1 and batch 64.

Pure torch/onnxruntime; kdchain.tracking logs what this returns. Timings run on `threads` CPU threads (1 by default:
a deployment box running one model per core), after a warm-up, as medians.
"""

import copy
import functools
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
# ONNX Runtime moves a QuantizeLinear up across MaxPool; after a float first convolution that runs the pooling in
# uint8 on NCHW, a generic kernel 10x slower than the float one (digits C at batch 64: 0.56x fp32 instead of 1.2x).
# Nothing to move in a float graph. A serving team passes the same (kdchain export's manifest says so).
ORT_DISABLED_OPTIMIZERS = ["QDQPropagationTransformer"]


class ExportMismatch(RuntimeError):
    """The exported model disagrees with torch by more than the tolerance; `diff` and `tolerance` say by how much."""

    def __init__(self, message: str, diff: float, tolerance: float):
        super().__init__(message)
        self.diff, self.tolerance = diff, tolerance


@dataclass
class Speed:
    latency_ms: float  # torch eager, batch 1, median
    throughput_ips: float  # torch eager, batch `throughput_batch`, images per second
    throughput_batch: int  # 64, or fewer where 64 images would not fit the time budget
    latency_ms_onnx: float | None = None  # ONNX Runtime, batch 1, median (None: not exported)
    throughput_ips_onnx: float | None = None  # ONNX Runtime, batch `throughput_batch`, images per second

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def fitting_batch(largest: int, latency_ms: float | None, budget_s: float | None) -> int:
    """The largest batch up to `largest` whose forward (at `latency_ms` an image) takes at most a quarter of the
    budget: room for a warm-up and a timed run, or the two passes of a check."""
    if budget_s is None or not latency_ms:
        return largest
    return max(1, min(largest, int(budget_s / 4 / (latency_ms / 1000))))


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
    """An ONNX Runtime session on `path`; the check and the timings of one export share it (loading VGG19's 558 MB
    graph takes seconds), until the file changes or export_and_measure has finished."""
    return _session(str(path), Path(path).stat().st_mtime_ns, threads)


@functools.lru_cache(maxsize=1)
def _session(path: str, mtime_ns: int, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=ORT_DISABLED_OPTIMIZERS)


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


def measure_speed(model: nn.Module, path: Path | None, input_shape: tuple[int, ...], threads: int = 1,
                  runs: int = 30, warmup: int = 5, eager_latency_ms: float | None = None,
                  budget_s: float | None = None) -> Speed:
    """Torch eager and (with an ONNX file at `path`) ONNX Runtime on the same inputs: median batch-1 latency,
    throughput at batch 64 (fewer when 64 images would not fit `budget_s`), each figure within `budget_s`.
    `eager_latency_ms`: the eager batch-1 latency when the caller has just measured it (kdchain.measure.profile)."""
    cpu = copy.deepcopy(model).cpu().eval()
    if eager_latency_ms is None:
        eager_latency_ms = latency_ms(cpu, input_shape, runs, warmup, threads, budget_s)
    batch = fitting_batch(64, eager_latency_ms, budget_s)
    xb = torch.randn(batch, *input_shape)
    big_runs, big_warmup = max(5, runs // 5), max(2, warmup // 5)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            tb = median_seconds(lambda: cpu(xb), big_runs, big_warmup, budget_s)
    finally:
        torch.set_num_threads(old)
    speed = Speed(latency_ms=eager_latency_ms, throughput_ips=batch / tb, throughput_batch=batch)
    if path is not None:
        session = ort_session(path, threads)
        n1, nb = torch.randn(1, *input_shape).numpy(), xb.numpy()
        speed.latency_ms_onnx = 1000 * median_seconds(lambda: session.run(["logits"], {"x": n1}), runs, warmup,
                                                      budget_s)
        speed.throughput_ips_onnx = batch / median_seconds(lambda: session.run(["logits"], {"x": nb}), big_runs,
                                                           big_warmup, budget_s)
    return speed


def export_and_measure(model: nn.Module, input_shape: tuple[int, ...], path: Path, check_x: torch.Tensor,
                       threads: int = 1, eager_latency_ms: float | None = None, onnx: bool = True,
                       speed: bool = True, runs: int = 30, budget_s: float | None = None) -> dict[str, float]:
    """Export and check on `check_x` (as many of its images as fit `budget_s`; raises ExportMismatch) unless
    `onnx` is off, time unless `speed` is off; returns the metrics to log."""
    metrics = {}
    if onnx:
        export_onnx(model, input_shape, path)
        metrics["onnx_max_abs_diff"] = check_onnx(model, path,
                                                  check_x[:fitting_batch(len(check_x), eager_latency_ms, budget_s)])
    if speed:
        metrics |= measure_speed(model, path if onnx else None, input_shape, threads, runs, budget_s=budget_s,
                                 eager_latency_ms=eager_latency_ms).as_dict()
    _session.cache_clear()  # the session holds the whole model: not kept past this generation
    return metrics


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
