"""Per generation of a finished chain: batch-1 latency and batch-64 throughput, torch eager against ONNX Runtime,
each student against the teacher; then fp32 ONNX against the int8 ONNX (size, test accuracy, batch-1 latency,
batch-64 throughput). Reads the checkpoints `kdchain run` wrote (workdir/<chain>/<i>-<name>-*/) and quantizes each
generation here as the config's `deploy` says (`static` with its defaults where it says none), so the table is
this checkout's quantizer; --quant-format / --first-conv override the config's settings to compare them.

    python bench/latency.py [--workdir mlruns/kdchain/digits-chain] [--config configs/digits-chain.yaml]
                            [--set key=value ...] [--threads 1] [--repeat 3] [--quant-format qdq] [--first-conv int8]
"""

import argparse
import statistics
import tempfile
from pathlib import Path

from _common import DEFAULT_CONFIG, ROOT

from kdchain.checkpoints import load_checkpoint
from kdchain.data import batches, load_data
from kdchain.measure.export import export_onnx, measure_speed
from kdchain.measure.quantize import onnx_accuracy, onnx_speed, quantize_onnx
from kdchain.spec import DeploySpec, load_spec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=str(ROOT / "mlruns" / "kdchain" / "digits-chain"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="medians of this many measurements")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="the chain's config: its data and deploy")
    ap.add_argument("--set", action="append", default=[], help="the --set overrides the chain ran with")
    ap.add_argument("--quant-format", choices=["qoperator", "qdq"], help="instead of the config's deploy.quant_format")
    ap.add_argument("--first-conv", choices=["float", "int8"], help="instead of the config's deploy.first_conv")
    args = ap.parse_args()
    ckpts = sorted(Path(args.workdir).glob("*/model.pt"), key=lambda p: int(p.parent.name.split("-")[0]))
    if not ckpts:
        raise SystemExit(f"no */model.pt under {args.workdir}; run `kdchain run configs/digits-chain.yaml` first")
    rows, exported = [], []
    tmp = tempfile.TemporaryDirectory()
    for ckpt in ckpts:
        model, arch, raw = load_checkpoint(ckpt)
        shape = tuple(raw["input_shape"])
        path = export_onnx(model, shape, Path(tmp.name) / f"{ckpt.parent.name}.onnx")
        exported.append((ckpt, shape, path))
        runs = [measure_speed(model, path, shape, threads=args.threads, runs=100, warmup=20).as_dict()
                for _ in range(args.repeat)]
        rows.append({"name": ckpt.parent.name.split("-", 1)[1].rsplit("-", 1)[0],
                     **{k: statistics.median(r[k] for r in runs) for k in runs[0]}})
    t = rows[0]
    print(f"{args.threads} thread(s), medians of {args.repeat} x 100 runs")
    print(f"{'gen':>8} {'eager b1 ms':>11} {'onnx b1 ms':>10} {'onnx/eager':>10} {'eager b64 ips':>13} "
          f"{'onnx b64 ips':>12} {'b1 vs teacher eager':>19} {'b1 vs teacher onnx':>18}")
    for r in rows:
        print(f"{r['name']:>8} {r['latency_ms']:11.3f} {r['latency_ms_onnx']:10.3f} "
              f"{r['latency_ms_onnx'] / r['latency_ms']:9.2f}x {r['throughput_ips']:13.0f} "
              f"{r['throughput_ips_onnx']:12.0f} {r['latency_ms'] / t['latency_ms']:18.3f}x "
              f"{r['latency_ms_onnx'] / t['latency_ms_onnx']:17.3f}x")
    c = rows[-1]
    students = rows[1:]
    print(f"ONNX/eager at batch 1, students: worst {max(r['latency_ms_onnx'] / r['latency_ms'] for r in students):.2f}x "
          f"(target <= 0.8x)")
    print(f"{c['name']} latency / teacher's: ONNX Runtime {c['latency_ms_onnx'] / t['latency_ms_onnx']:.3f}, "
          f"torch eager {c['latency_ms'] / t['latency_ms']:.3f} (target <= 0.1)")
    with tmp:
        spec = load_spec(args.config, args.set)
        deploy = spec.deploy if spec.deploy.quantized else DeploySpec(quantize="static")
        override = {"quant_format": args.quant_format, "first_conv": args.first_conv}
        deploy = deploy.model_copy(update={k: v for k, v in override.items() if v})
        int8_table(exported, spec, deploy, args.threads, args.repeat)


def int8_table(exported: list[tuple[Path, tuple, Path]], spec, deploy: DeploySpec, threads: int,
               repeat: int) -> None:
    """fp32 ONNX vs int8 ONNX per (checkpoint, input shape, fp32 file), both through ONNX Runtime; the int8 file
    quantized as `deploy` says, calibrated on the chain's seeded sample of training images."""
    import torch

    data = load_data(spec.data, spec.seed)
    test = [(x.numpy(), y.numpy()) for x, y in batches(data.test, 256, shuffle=False)]
    generator = torch.Generator().manual_seed(spec.seed)
    sample = next(batches(data.train, deploy.calibration_images, generator))[0].numpy()
    rows = []
    for ckpt, shape, fp32 in exported:
        int8 = quantize_onnx(fp32, fp32.with_suffix(".int8.onnx"), deploy.quantize, sample, deploy.quant_format,
                             deploy.first_conv)
        f_speed = [onnx_speed(fp32, shape, threads, runs=100, warmup=20) for _ in range(repeat)]
        q_speed = [onnx_speed(int8, shape, threads, runs=100, warmup=20) for _ in range(repeat)]
        rows.append({"name": ckpt.parent.name.split("-", 1)[1].rsplit("-", 1)[0], "size": fp32.stat().st_size,
                     "size8": int8.stat().st_size, "acc": onnx_accuracy(fp32, test, threads),
                     "acc8": onnx_accuracy(int8, test, threads),
                     "ms": statistics.median(s[0] for s in f_speed), "ms8": statistics.median(s[0] for s in q_speed),
                     "ips": statistics.median(s[1] for s in f_speed),
                     "ips8": statistics.median(s[1] for s in q_speed)})
    print(f"\nfp32 ONNX vs int8 ONNX ({deploy.quantize}, {deploy.quant_format}, first conv {deploy.first_conv}, "
          f"per-channel), ONNX Runtime, {threads} thread(s), test split of {sum(len(y) for _, y in test)} images")
    print(f"{'gen':>8} {'fp32 B':>9} {'int8 B':>9} {'int8/fp32':>9} {'fp32 acc':>8} {'int8 acc':>8} {'points':>6} "
          f"{'fp32 b1 ms':>10} {'int8 b1 ms':>10} {'fp32 b64 ips':>12} {'int8 b64 ips':>12} {'b64 int8/fp32':>13}")
    for r in rows:
        print(f"{r['name']:>8} {r['size']:9,} {r['size8']:9,} {r['size8'] / r['size']:9.3f} {r['acc']:8.2%} "
              f"{r['acc8']:8.2%} {100 * (r['acc8'] - r['acc']):+6.2f} {r['ms']:10.3f} {r['ms8']:10.3f} "
              f"{r['ips']:12.0f} {r['ips8']:12.0f} {r['ips8'] / r['ips']:12.2f}x")
    c = rows[-1]
    print(f"{c['name']}: int8/fp32 size {c['size8'] / c['size']:.3f} (target <= 0.333), accuracy "
          f"{100 * (c['acc8'] - c['acc']):+.2f} points (target within 1), batch-64 throughput "
          f"{c['ips8'] / c['ips']:.2f}x fp32 (target > 1)")


if __name__ == "__main__":
    main()
