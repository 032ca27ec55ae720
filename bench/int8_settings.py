"""The int8 settings (deploy.quant_format, deploy.first_conv) on a larger model than the chains': timm's resnet18
(11.2M params, 7x7 stride-2 first convolution with 64 channels) with random weights at 3x64x64, 10 classes.
Random weights have no accuracy, so it reports the int8 model's top-1 agreement with fp32 on random inputs,
the size ratio and the batch-1 latency / batch-64 throughput ratios (ONNX Runtime, 1 thread, kdchain's session).

    python bench/int8_settings.py [--repeat 3]
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import _common  # noqa: F401  (this checkout's packages first)
import numpy as np
import torch

from kdchain.measure.export import export_onnx, ort_session
from kdchain.measure.quantize import onnx_speed, quantize_onnx

SHAPE = (3, 64, 64)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3, help="medians of this many measurements")
    args = ap.parse_args()
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10).eval()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, SHAPE, Path(tmp) / "resnet18.onnx")
        calibration = np.random.default_rng(0).standard_normal((128, *SHAPE), dtype=np.float32)
        x = np.random.default_rng(1).standard_normal((256, *SHAPE), dtype=np.float32)
        reference = ort_session(fp32).run(["logits"], {"x": x})[0].argmax(1)
        speed = lambda path: [statistics.median(s[i] for s in runs)  # noqa: E731
                              for runs in [[onnx_speed(path, SHAPE, runs=20, warmup=3) for _ in range(args.repeat)]]
                              for i in (0, 1)]
        ms, ips = speed(fp32)
        print(f"resnet18 fp32: {fp32.stat().st_size:,} B, batch 1 {ms:.2f} ms, batch 64 {ips:.0f} images/s")
        for fmt, first in (("qoperator", "float"), ("qoperator", "int8"), ("qdq", "float"), ("qdq", "int8")):
            path = quantize_onnx(fp32, Path(tmp) / f"{fmt}-{first}.onnx", "static", calibration, fmt, first)
            agree = float((ort_session(path).run(["logits"], {"x": x})[0].argmax(1) == reference).mean())
            ms8, ips8 = speed(path)
            print(f"  quant_format {fmt:9} first_conv {first:5}: size {path.stat().st_size / fp32.stat().st_size:.3f}"
                  f" of fp32, top-1 agreement {agree:.3f}, batch 1 {ms8 / ms:.2f}x fp32 latency, "
                  f"batch 64 {ips8 / ips:.2f}x fp32 throughput")


if __name__ == "__main__":
    main()
