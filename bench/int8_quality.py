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


def report(runs: list[list[dict]], args) -> str:
    """The table docs/benchmarks.md quotes: accuracy mean ± std over seeds, the rest means."""
    def ms(k: str, i: int) -> str:
        values = [100 * run[i][k] for run in runs]
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"

    rows = ["| gen | fp32 % | PTQ % | bounded PTQ % | QAT % (ONNX Runtime) | QAT - fp32 | QAT file / fp32 | "
            "batch-1 ms fp32 / int8 | batch-64 img/s fp32 / int8 | QAT s / training s |", "|---" * 10 + "|"]
    for i, name in enumerate(r["name"] for r in runs[0]):
        mean = {k: statistics.mean(run[i][k] for run in runs) for k in COLUMNS}
        rows.append(f"| {name} | {ms('fp32', i)} | {ms('ptq', i)} | {ms('bounded', i)} | {ms('qat', i)} | "
                    f"{100 * (mean['qat'] - mean['fp32']):+.2f} | {mean['size']:.3f} | {mean['b1_ms_fp32']:.3f} / "
                    f"{mean['b1_ms_int8']:.3f} | {mean['b64_ips_fp32']:,.0f} / {mean['b64_ips_int8']:,.0f} "
                    f"({mean['b64_ips_int8'] / mean['b64_ips_fp32']:.2f}x) | {mean['qat_s']:.1f} / "
                    f"{mean['fit_s']:.1f} |")
    sets = "".join(f" --set {o}" for o in args.set)
    return "\n".join([
        f"## int8 quality per generation: {args.config.name}", "",
        f"Measured by `python bench/int8_quality.py --config {args.config} --seeds {' '.join(map(str, args.seeds))}"
        f" --epochs {args.epochs} --qat-epochs {args.qat_epochs}{sets}` on {args.cpu or 'this CPU'}. Test accuracy "
        f"mean ± std over {len(runs)} seeds; the QAT model's ONNX Runtime accuracy equals its fake-quantized torch "
        "accuracy within 0.2 points by construction (a generation past it is refused). Sizes, latency (batch 1) and "
        "throughput (batch 64) are ONNX Runtime's on 1 thread, fp32 ONNX against the shipped QAT file; the last "
        "column is QAT's added wall time against the generation's training (fit) time.", "", *rows, ""])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=_common.DEFAULT_CONFIG)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=0, help="every generation's train.epochs (0: the config's)")
    ap.add_argument("--qat-epochs", type=int, default=2, help="deploy.qat_epochs")
    ap.add_argument("--set", nargs="*", default=[], help="more overrides, as kdchain run --set")
    ap.add_argument("--cpu", default="", help="the CPU's name for the report (lscpu's model name, bf16 or not)")
    ap.add_argument("--out", type=Path, default=None, help="write the table as a section of this markdown file")
    args = ap.parse_args()
    runs = [one_seed(args.config, args, seed) for seed in args.seeds]
    text = report(runs, args)
    print(text)
    if args.out is not None:
        from quality import write_section

        write_section(args.out, f"int8-{args.config.stem}", text)


if __name__ == "__main__":
    main()
