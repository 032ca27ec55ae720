"""A chain's family as one folder for a serving team: every generation's fp32 and int8 ONNX and a manifest.json
with each one's accuracy, latency, size, and the input it expects (shape, normalisation) and the class names.

`write_bundle` takes what kdchain.tracking.bundle read from the store; a generation the chain did not quantize is
quantized here (its `deploy` settings, or static with the defaults) and scored on the test split the same way.
The folder is written beside its final name and renamed when complete: nothing half-written.
"""

import json
import os
import shutil
from pathlib import Path

from kdchain.checkpoints import load_checkpoint
from kdchain.data import load_data
from kdchain.data.images import Normalise
from kdchain.measure.export import ORT_DISABLED_OPTIMIZERS, export_onnx, label_onnx
from kdchain.measure.quantize import onnx_speed
from kdchain.resolve import resolve_chain
from kdchain.shipping import quantize_generation
from kdchain.spec import ChainSpec, DeploySpec



def int8_method(int8: dict) -> str:
    """How the int8 file was made: qat (fine-tuned with fake quantization during the chain run), bounded-ptq (ONNX
    Runtime's quantizer with nodes kept float to hold deploy.max_drop) or ptq; kdchain export quantizes static."""
    if int8["mode"] == "qat" and int8["quantized"] == "during the chain run":
        return "qat"
    return "bounded-ptq" if int8.get("float_nodes") else "ptq"

def normalisation(spec: ChainSpec, data) -> dict:
    """How raw images become the model's input `x`."""
    transform = getattr(data.test, "transform", None)
    if isinstance(transform, Normalise):
        return {"from": "uint8 pixels (N, C, h, w)", "resize": [transform.size, transform.size],
                "resize_mode": "bilinear, antialias", "scale": 1 / 255,
                "mean": transform.mean.flatten().tolist(), "std": transform.std.flatten().tolist(),
                "formula": "x = (resize(pixels) / 255 - mean) / std"}
    return {"from": f"kdchain's {spec.data.kind} loader", "formula": "x = kdchain.data.load_data(data, seed) "
            "split tensors: already normalised (per-channel mean and std of the training split)"}


def _entry(path: Path, accuracy, latency, throughput) -> dict:
    return {"file": path.name, "test_accuracy": accuracy, "latency_ms": latency, "throughput_ips": throughput,
            "size_bytes": path.stat().st_size}


def write_bundle(spec: ChainSpec, chain_run_id: str, rows: list[dict], out: Path) -> dict:
    """Copy each generation's ONNX files into `out` (quantizing the ones without int8), write manifest.json there;
    returns the manifest. `out` must not exist yet, or be empty."""
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    data = load_data(spec.data, spec.seed)
    gens = resolve_chain(spec)
    entries = []
    try:
        for row in rows:
            stem = f"{row['generation']}-{row['name']}"
            fp32 = partial / f"{stem}.onnx"
            if row["onnx"] is None:  # ONNX not kept in the store: exported from its weights (timed if never)
                model = load_checkpoint(Path(row["checkpoint"]))[0]
                export_onnx(model, data.input_shape, fp32)
                if model.class_names:
                    label_onnx(fp32, model.class_names)
                if row.get("latency_ms_onnx") is None or row.get("throughput_ips_onnx") is None:
                    row["latency_ms_onnx"], row["throughput_ips_onnx"] = onnx_speed(fp32, data.input_shape)
            else:
                shutil.copyfile(row["onnx"], fp32)
            entry = {"generation": row["generation"], "name": row["name"], "architecture": row["summary"],
                     "run_id": row["run_id"], "params": row["params"],
                     "fp32": _entry(fp32, row["test_accuracy"], row["latency_ms_onnx"], row["throughput_ips_onnx"])}
            if row.get("onnx_int8"):
                int8 = partial / f"{stem}.int8.onnx"
                shutil.copyfile(row["onnx_int8"], int8)
                entry["int8"] = _entry(int8, row["test_accuracy_int8"], row["latency_ms_int8"],
                                       row["throughput_ips_int8"])
                entry["int8"] |= {"quantized": "during the chain run", "float_nodes": row.get("int8_float_nodes", [])}
            else:  # not quantized by the chain: now, with its deploy settings or static defaults
                gen = gens[row["generation"]]
                if not gen.deploy.quantized:
                    gen.deploy = DeploySpec(quantize="static")
                result = quantize_generation(spec, gen, data, fp32, row["test_accuracy"])
                m = result.metrics
                entry["int8"] = _entry(result.path, m["test_accuracy_int8"], m["latency_ms_int8"],
                                       m["throughput_ips_int8"]) | {"quantized": "by kdchain export",
                                                                    "float_nodes": result.float_nodes}
            entry["int8"]["mode"] = gens[row["generation"]].deploy.quantize
            entry["int8"]["method"] = int8_method(entry["int8"])
            entries.append(entry)
        manifest = {"chain": spec.name, "chain_run_id": chain_run_id,
                    "input": {"name": "x", "shape": ["batch", *data.input_shape], "dtype": "float32",
                              "normalisation": normalisation(spec, data)},
                    "output": {"name": "logits", "shape": ["batch", data.num_classes], "dtype": "float32"},
                    "class_names": list(data.class_names), "data": spec.data.model_dump(mode="json"),
                    "seed": spec.seed, "generations": entries,
                    # the session the figures were measured with: see kdchain.measure.export
                    "onnxruntime": {"disabled_optimizers": ORT_DISABLED_OPTIMIZERS, "intra_op_num_threads": 1}}
        (partial / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked by the caller); a non-empty folder raises here and is left alone
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return manifest
