"""int8 quality per generation of a chain: fp32 test accuracy, ONNX Runtime static PTQ, bounded PTQ
(deploy.max_float_nodes) and QAT (deploy.quantize: qat) accuracy, the shipped QAT file's size over fp32's, batch-1
latency and batch-64 throughput (fp32 ONNX vs QAT int8, ONNX Runtime, 1 thread), and QAT's added wall time over the
generation's training time. Library calls (kdchain.chain.train_generation), no Prefect or MLflow; seeds in turn.

    python bench/int8_quality.py [--config configs/digits-chain.yaml] [--seeds 0 1 2] [--epochs 2]
                                 [--qat-epochs 2] [--set key=value ...]
"""

import argparse
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import _common  # this checkout's packages first

from kdchain.chain import train_generation
from kdchain.data import load_data
from kdchain.measure.export import export_onnx
from kdchain.measure.quantize import onnx_speed
from kdchain.resolve import resolve_chain
from kdchain.shipping import quantize_generation
from kdchain.spec import DeploySpec, load_spec

COLUMNS = ("fp32", "ptq", "bounded", "qat", "qat_torch", "size", "b1_ms_fp32", "b1_ms_int8", "b64_ips_fp32",
           "b64_ips_int8", "qat_s", "fit_s")


def overrides(config: Path, args, seed: int, workdir: Path) -> list[str]:
    sets = [*args.set, f"seed={seed}", f"workdir={workdir}", "deploy.quantize=qat",
            f"deploy.qat_epochs={args.qat_epochs}"]
    if args.epochs:
        n = len(load_spec(config, args.set).generations)
        sets += [f"teacher.train.epochs={args.epochs}"] + [f"generations.{i}.train.epochs={args.epochs}"
                                                           for i in range(n)]
    return sets


def one_seed(config: Path, args, seed: int) -> list[dict]:
    """Per generation, the figures of COLUMNS for one seed."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        spec = load_spec(config, overrides(config, args, seed, Path(tmp) / "work"))
        data = load_data(spec.data, spec.seed)
        teacher = None
        for gen in resolve_chain(spec):
            outcome, model = train_generation(spec, gen.index, teacher, Path(tmp) / f"g{gen.index}")
            teacher = Path(outcome.checkpoint)
            m = outcome.metrics
            fp32 = export_onnx(model, data.input_shape, Path(tmp) / f"g{gen.index}.onnx")
            ms32, ips32 = onnx_speed(fp32, data.input_shape)
            scores = {}
            for name, floats in (("ptq", 0), ("bounded", 4)):
                deploy = DeploySpec(quantize="static", max_float_nodes=floats, max_drop=gen.deploy.max_drop)
                result = quantize_generation(spec, replace(gen, deploy=deploy), data, fp32, m["test_accuracy"])
                scores[name] = result.metrics["test_accuracy_int8"]
            rows.append({"name": gen.name, "fp32": m["test_accuracy"], **scores, "qat": m["test_accuracy_int8"],
                         "qat_torch": m["test_accuracy_int8_qat_torch"],
                         "size": m["size_bytes_int8"] / fp32.stat().st_size, "b1_ms_fp32": ms32,
                         "b1_ms_int8": m["latency_ms_int8"], "b64_ips_fp32": ips32,
                         "b64_ips_int8": m["throughput_ips_int8"], "qat_s": outcome.seconds["qat"],
                         "fit_s": outcome.seconds["fit"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=_common.DEFAULT_CONFIG)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=0, help="every generation's train.epochs (0: the config's)")
    ap.add_argument("--qat-epochs", type=int, default=2, help="deploy.qat_epochs")
    ap.add_argument("--set", nargs="*", default=[], help="more overrides, as kdchain run --set")
    args = ap.parse_args()
    runs = [one_seed(args.config, args, seed) for seed in args.seeds]
    print(f"{args.config.name}, seeds {args.seeds}, medians; accuracy in %, size int8/fp32, ONNX Runtime 1 thread")
    print(f"{'gen':8} {'fp32':>6} {'ptq':>6} {'bound':>6} {'qat':>6} {'qat/pt':>6} {'size':>5} "
          f"{'b1 ms fp32/int8':>16} {'b64 ips fp32/int8':>18} {'qat s / fit s':>14}")
    for i, name in enumerate(r["name"] for r in runs[0]):
        med = {k: statistics.median(run[i][k] for run in runs) for k in COLUMNS}
        print(f"{name:8} {med['fp32'] * 100:6.2f} {med['ptq'] * 100:6.2f} {med['bounded'] * 100:6.2f} "
              f"{med['qat'] * 100:6.2f} {med['qat_torch'] * 100:6.2f} {med['size']:5.3f} "
              f"{med['b1_ms_fp32']:7.3f}/{med['b1_ms_int8']:<8.3f} {med['b64_ips_fp32']:8.0f}/{med['b64_ips_int8']:<9.0f}"
              f" {med['qat_s']:5.1f}/{med['fit_s']:<5.1f} ({med['qat_s'] / max(med['fit_s'], 1e-9):.1f}x)")


if __name__ == "__main__":
    main()
