"""Per generation of a finished chain: batch-1 latency and batch-64 throughput, torch eager against ONNX Runtime,
each student against the teacher. Reads the checkpoints `kdchain run` wrote (workdir/<chain>/<i>-<name>-*/).

    python bench/latency.py [--workdir mlruns/kdchain/digits-chain] [--threads 1] [--repeat 3]
"""

import argparse
import statistics
import tempfile
from pathlib import Path

from _common import ROOT
from kdchain.checkpoints import load_checkpoint
from kdchain.measure.export import export_onnx, measure_speed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=str(ROOT / "mlruns" / "kdchain" / "digits-chain"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="medians of this many measurements")
    args = ap.parse_args()
    ckpts = sorted(Path(args.workdir).glob("*/model.pt"), key=lambda p: int(p.parent.name.split("-")[0]))
    if not ckpts:
        raise SystemExit(f"no */model.pt under {args.workdir}; run `kdchain run configs/digits-chain.yaml` first")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ckpt in ckpts:
            model, arch, raw = load_checkpoint(ckpt)
            shape = tuple(raw["input_shape"])
            path = export_onnx(model, shape, Path(tmp) / f"{ckpt.parent.name}.onnx")
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


if __name__ == "__main__":
    main()
