"""int8 versions of a generation's ONNX file, through ONNX Runtime's own quantizer, and what they cost and lose.

static: `quantize_static` with per-channel int8 weights, activation ranges calibrated (min/max) on a seeded sample
of training images, written as ONNX Runtime's integer operators (QOperator: QLinearConv, QGemm) or as QDQ pairs
around float operators (`deploy.quant_format`); the first convolution stays float unless `deploy.first_conv: int8`.
dynamic: `quantize_dynamic`, int8 weights of MatMul/Gemm with activations quantized at run time (convolutions
stay float: ONNX Runtime's ConvInteger is slow or missing on CPU). The int8 model is timed like the fp32 one
(kdchain.measure.export: batch-1 median latency, batch-64 throughput, 1 thread).
"""

import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from kdchain.measure.export import ort_session
from kdchain.measure.profile import median_seconds

CALIBRATION_BATCH = 32  # images per calibration forward: 512 images at 224x224 in one go would take 300 MB
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
# ops that only move or reshape data: "stayed in float" lists the ones that compute
LAYOUT_OPS = {"Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Shape", "Gather", "Concat", "Constant",
              "Identity", "Cast", "Slice"}


class QuantizeError(RuntimeError):
    """ONNX Runtime could not quantize the model; the message says which file and why."""


class _Calibration:
    """onnxruntime.quantization.CalibrationDataReader over (N, C, H, W) float32 images, CALIBRATION_BATCH at a time."""

    def __init__(self, images: np.ndarray):
        self.batches = iter([images[i:i + CALIBRATION_BATCH] for i in range(0, len(images), CALIBRATION_BATCH)])

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        return None if batch is None else {"x": np.ascontiguousarray(batch, dtype=np.float32)}


def quantize_onnx(fp32: Path, out: Path, mode: str, calibration: np.ndarray | None = None,
                  quant_format: str = "qoperator", first_conv: str = "float", float_nodes: Sequence[str] = ()) -> Path:
    """Write the int8 version of `fp32` to `out`; `calibration` (N, C, H, W) images are required for static.
    `quant_format` and `first_conv` are DeploySpec's (static only); `float_nodes` (names from quantizable_nodes)
    stay in float32."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    fp32, out = Path(fp32), Path(out)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # shape inference and graph clean-up first, as ONNX Runtime's quantization guide asks
            prepared = _prepared(fp32, Path(tmp))
            if mode == "static":
                if calibration is None or not len(calibration):
                    raise QuantizeError(f"static quantization of {fp32.name} needs calibration images")
                reader = _Calibration(calibration)
                CalibrationDataReader.register(type(reader))
                fmt = QuantFormat.QOperator if quant_format == "qoperator" else QuantFormat.QDQ
                quantize_static(str(prepared), str(out), reader, quant_format=fmt, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                nodes_to_exclude=[*(_first_conv(prepared) if first_conv == "float" else []),
                                                  *float_nodes])
            elif mode == "dynamic":
                quantize_dynamic(str(prepared), str(out), op_types_to_quantize=["MatMul", "Gemm"],
                                 per_channel=True, weight_type=QuantType.QInt8, nodes_to_exclude=list(float_nodes))
            else:
                raise ValueError(f"quantize mode {mode!r} is not static or dynamic")
    except QuantizeError:
        raise
    except Exception as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)[:200]
        raise QuantizeError(f"ONNX Runtime could not quantize {fp32} ({mode}): {first}") from None
    compact_graph(out)
    return out


def _prepared(fp32: Path, folder: Path) -> Path:
    """Shape inference and graph clean-up first, as ONNX Runtime's quantization guide asks: prepared.onnx in `folder`."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = folder / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    return prepared


def quantizable_nodes(fp32: Path, mode: str, first_conv: str = "float") -> list[str]:
    """Names of the nodes quantize_onnx makes int8 (static: Conv, Gemm, MatMul; dynamic: Gemm, MatMul), in graph
    order, as the prepared graph names them: what `float_nodes` may keep in float."""
    import onnx

    ops = {"Conv", "Gemm", "MatMul"} if mode == "static" else {"Gemm", "MatMul"}
    with tempfile.TemporaryDirectory() as tmp:
        prepared = _prepared(Path(fp32), Path(tmp))
        names = [n.name for n in onnx.load(str(prepared), load_external_data=False).graph.node if n.op_type in ops]
        skip = set(_first_conv(prepared)) if mode == "static" and first_conv == "float" else set()
    return [n for n in names if n not in skip]


def _first_conv(path: Path) -> list[str]:
    """The name of the graph's first Conv node (none: an empty list), for quantize_static's nodes_to_exclude."""
    import onnx

    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "Conv"][:1]


def compact_graph(path: Path) -> None:
    """Rename the graph's tensors t0, t1, ... and drop node names and metadata, inferred shapes, the quantizer's metadata, the
    opset imports no node uses and attributes equal to their ONNX default, keeping input `x` and output `logits`:
    the exporter's scoped names, tripled by the quantizer's _quantized/_scale/_zero_point suffixes, were 40% of a
    small model's int8 file (digits C: 15,049 -> 7,200 bytes); the quantizer imports 9 opset domains for 2 used."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    keep = {i.name for i in graph.input} | {o.name for o in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        return name if not name or name in keep else names.setdefault(name, f"t{len(names):x}")

    for node in graph.node:
        node.name = node.doc_string = ""
        del node.metadata_props[:]  # torch.onnx's dynamo exporter: each node's stack trace, 80% of a QAT file
        node.input[:] = [short(i) for i in node.input]
        node.output[:] = [short(o) for o in node.output]
    for init in graph.initializer:
        init.name = short(init.name)
    del graph.value_info[:]
    _drop_default_attributes(model)
    used = {node.domain for node in graph.node} | {""}
    kept = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    del model.metadata_props[:]
    onnx.save(model, str(path))


def _drop_default_attributes(model) -> None:
    """Remove node attributes whose value is the default in the operator's ONNX schema (group=1, ceil_mode=0, ...);
    operators the onnx package has no schema for (ONNX Runtime's com.microsoft ones) keep theirs."""
    import onnx

    versions = {o.domain: o.version for o in model.opset_import}
    for node in model.graph.node:
        try:
            schema = onnx.defs.get_schema(node.op_type, versions.get(node.domain, 1), node.domain)
        except onnx.defs.SchemaError:
            continue
        defaults = {name: a.default_value for name, a in schema.attributes.items() if a.default_value.name}
        keep = [a for a in node.attribute if a.name not in defaults
                or onnx.helper.get_attribute_value(a) != onnx.helper.get_attribute_value(defaults[a.name])]
        del node.attribute[:]
        node.attribute.extend(keep)


def float_ops(path: Path) -> dict[str, int]:
    """Op types (and counts) of the nodes that still compute in float: not a quantize/dequantize node, not an
    integer kernel, and fed by at least one float activation that no quantized node produced (DequantizeLinear;
    with dynamic quantization the integer kernels and the casts and scalings of their results)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    weights = {i.name for i in graph.initializer}
    left = Counter()
    for node in graph.node:
        if node.op_type in QUANT_OPS or node.op_type in LAYOUT_OPS or _integer_kernel(node.op_type):
            continue
        data = [i for i in node.input if i and i not in weights]
        if any(not _quantized_path(produced_by.get(i)) for i in data):
            left[node.op_type] += 1
    return dict(left)


def _integer_kernel(op: str) -> bool:
    """ConvInteger/MatMulInteger (dynamic), QLinearConv/QLinearMatMul/... and ONNX Runtime's QGemm (QOperator)."""
    return "Integer" in op or op.startswith("QLinear") or op == "QGemm"


def _quantized_path(op: str | None) -> bool:
    return op is not None and (op in QUANT_OPS or _integer_kernel(op) or op == "Cast")


def onnx_accuracy(path: Path, test: Iterable[tuple[np.ndarray, np.ndarray]], threads: int = 1) -> float:
    """Top-1 accuracy of an ONNX file over (x, y) batches, through ONNX Runtime."""
    session = ort_session(path, threads)
    right = total = 0
    for x, y in test:
        logits = session.run(["logits"], {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]
        right += int((logits.argmax(1) == y).sum())
        total += len(y)
    return right / max(total, 1)


def onnx_speed(path: Path, input_shape: tuple[int, ...], threads: int = 1, runs: int = 30,
               warmup: int = 5) -> tuple[float, float]:
    """(median batch-1 latency in ms, batch-64 images per second): the fp32 ONNX protocol of export.measure_speed."""
    session = ort_session(path, threads)
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1, *input_shape), dtype=np.float32)
    x64 = rng.standard_normal((64, *input_shape), dtype=np.float32)
    t1 = median_seconds(lambda: session.run(["logits"], {"x": x1}), runs, warmup)
    # batch 64: 15 timed runs at least (6 left a seed's int8/fp32 ratio at 0.9x or 1.5x for the same model)
    t64 = median_seconds(lambda: session.run(["logits"], {"x": x64}), max(15, runs // 2), max(3, warmup // 2))
    return t1 * 1000, 64 / t64
