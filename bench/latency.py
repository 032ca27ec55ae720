"""Per generation of a finished chain: batch-1 latency and batch-64 throughput, torch eager against ONNX Runtime,
each student against the teacher; then fp32 ONNX against the int8 ONNX (size, test accuracy, batch-1 latency,
batch-64 throughput). Reads the checkpoints `kdchain run` wrote (workdir/<chain>/<i>-<name>-*/) and the int8 file
beside each (deploy: {quantize: static}); a generation without one is quantized here as `static` would.

    python bench/latency.py [--workdir mlruns/kdchain/digits-chain] [--config configs/digits-chain.yaml]
                            [--threads 1] [--repeat 3]
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
from kdchain.spec import load_spec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=str(ROOT / "mlruns" / "kdchain" / "digits-chain"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="medians of this many measurements")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="the chain's config: its data for int8 accuracy")
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
        rows.append({"name": ckpt.parent.name.split("-")[1],
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
        int8_table(exported, load_spec(args.config), args.threads, args.repeat)


def int8_table(exported: list[tuple[Path, tuple, Path]], spec, threads: int, repeat: int) -> None:
    """fp32 ONNX vs int8 ONNX per (checkpoint, input shape, fp32 file), both through ONNX Runtime."""
    data = load_data(spec.data, spec.seed)
    test = [(x.numpy(), y.numpy()) for x, y in batches(data.test, 256, shuffle=False)]
    rows = []
    for ckpt, shape, fp32 in exported:
        int8 = ckpt.with_suffix(".int8.onnx")
        if not int8.is_file():  # quantized here as deploy: {quantize: static} would (seed, 512 images)
            import torch

            sample = next(batches(data.train, 512, torch.Generator().manual_seed(spec.seed)))[0].numpy()
            int8 = quantize_onnx(fp32, fp32.with_suffix(".int8.onnx"), "static", sample)
        f_speed = [onnx_speed(fp32, shape, threads, runs=100, warmup=20) for _ in range(repeat)]
        q_speed = [onnx_speed(int8, shape, threads, runs=100, warmup=20) for _ in range(repeat)]
        rows.append({"name": ckpt.parent.name.split("-")[1], "size": fp32.stat().st_size,
                     "size8": int8.stat().st_size, "acc": onnx_accuracy(fp32, test, threads),
                     "acc8": onnx_accuracy(int8, test, threads),
                     "ms": statistics.median(s[0] for s in f_speed), "ms8": statistics.median(s[0] for s in q_speed),
                     "ips": statistics.median(s[1] for s in f_speed),
                     "ips8": statistics.median(s[1] for s in q_speed)})
    print(f"\nfp32 ONNX vs int8 ONNX (static, QDQ, per-channel), ONNX Runtime, {threads} thread(s), "
          f"test split of {sum(len(y) for _, y in test)} images")
    print(f"{'gen':>8} {'fp32 B':>9} {'int8 B':>9} {'int8/fp32':>9} {'fp32 acc':>8} {'int8 acc':>8} {'points':>6} "
          f"{'fp32 b1 ms':>10} {'int8 b1 ms':>10} {'fp32 b64 ips':>12} {'int8 b64 ips':>12} {'b64 int8/fp32':>13}")
    for r in rows:
        print(f"{r['name']:>8} {r['size']:9,} {r['size8']:9,} {r['size8'] / r['size']:9.3f} {r['acc']:8.2%} "
              f"{r['acc8']:8.2%} {100 * (r['acc8'] - r['acc']):+6.2f} {r['ms']:10.3f} {r['ms8']:10.3f} "
              f"{r['ips']:12.0f} {r['ips8']:12.0f} {r['ips8'] / r['ips']:12.2f}x")


if __name__ == "__main__":
    main()
