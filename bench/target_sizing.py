"""Target sizing on the marks chain: does a C sized by `prune: {target: {params: N}}` land within its target and
match the hand-typed C (`width: 0.7`)?

Per seed, three `kdchain run`s of configs/marks-chain.yaml's teacher -> A -> B -> C that differ in C alone, in one
workdir and store: the teacher, A and B train once and the later runs reuse them (reuse by content). C is
  hand          - the config's `prune: {width: 0.7, round_to: 1}`
  target 20000  - `prune: {target: {params: 20000}}` (the hand C has 20,809)
  target 9000   - `prune: {target: {params: 9000}}` (1/32 of the teacher's 288,170)
It prints C's params and test accuracy per variant and seed, and writes the section `quality:target-marks` of
docs/results.md.

    PREFECT_HOME=/tmp/prefect-target python bench/target_sizing.py --seeds 0 1 2
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from _common import ROOT, timed_run  # noqa: E402
from quality import write_section  # noqa: E402

VARIANTS = {"hand (width 0.7)": {"width": 0.7, "round_to": 1},
            "target params 20000": {"target": {"params": 20000}},
            "target params 9000": {"target": {"params": 9000}}}


def chain_config(seed: int, prune: dict, workdir: Path, uri: str, overrides: list[str]) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "marks-chain.yaml").read_text())
    cfg["generations"] = cfg["generations"][:3]
    cfg["generations"][2]["student"] = {"prune": prune}
    cfg.update(seed=seed, workdir=str(workdir), tracking={"uri": uri, "experiment": f"target-sizing-{seed}"})
    for o in overrides:
        from kdchain.spec import apply_override

        apply_override(cfg, o)
    return cfg


def generation_metrics(uri: str, experiment: str) -> dict[str, dict]:
    """The latest chain run's generations: name -> metrics, and `plan`: the architecture that trained."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    chain = client.search_runs([exp.experiment_id], "tags.`kdchain.kind` = 'chain'", order_by=["start_time DESC"])[0]
    gens = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{chain.info.run_id}'")
    return {r.data.tags["kdchain.generation_name"]: {**r.data.metrics, "plan": r.data.tags.get("mlflow.note.content")}
            for r in gens}


def run_seed(seed: int, folder: Path, overrides: list[str]) -> dict[str, dict]:
    uri = f"sqlite:///{folder / 'store' / 'mlflow.db'}"
    folder.mkdir(parents=True)
    out = {}
    for name, prune in VARIANTS.items():
        path = folder / f"{name.split()[0]}-{prune.get('target', {}).get('params', '')}.yaml"
        path.write_text(yaml.safe_dump(chain_config(seed, prune, folder / "work", uri, overrides), sort_keys=False))
        wall, _ = timed_run([sys.executable, "-m", "flows.cli", "run", str(path)])
        metrics = generation_metrics(uri, f"target-sizing-{seed}")
        out[name] = {"C": metrics["C"], "teacher": metrics["teacher"], "wall": wall}
        print(f"seed {seed} {name}: C {metrics['C']['params']:.0f} params, "
              f"{100 * metrics['C']['test_accuracy']:.2f} %, {wall:.0f} s ({metrics['C']['plan']})", flush=True)
    return out


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def report(results: dict[int, dict], args, minutes: float) -> str:
    seeds = sorted(results)
    teacher = [100 * results[s]["hand (width 0.7)"]["teacher"]["test_accuracy"] for s in seeds]
    rows = ["| C | params (per seed) | test accuracy % (mean ± std) | per seed | vs teacher (points) | wall s / seed |",
            "|---|---|---|---|---|---|"]
    for name in VARIANTS:
        acc = [100 * results[s][name]["C"]["test_accuracy"] for s in seeds]
        params = ", ".join(f"{results[s][name]['C']['params']:,.0f}" for s in seeds)
        gap = statistics.mean(a - t for a, t in zip(acc, teacher))
        wall = statistics.mean(results[s][name]["wall"] for s in seeds)
        rows.append(f"| {name} | {params} | {mean_std(acc)} | {', '.join(f'{a:.2f}' for a in acc)} | "
                    f"{gap:+.2f} | {wall:.0f} |")
    plans = [f"- {name}, seed {s}: {results[s][name]['C']['plan']}" for name in VARIANTS for s in seeds]
    cpu = platform.processor() or platform.machine()
    return "\n".join([
        "## target sizing: marks", "",
        f"Measured by `PREFECT_HOME=... python bench/target_sizing.py --seeds {' '.join(map(str, seeds))}"
        f"{''.join(f' --set {o}' for o in args.set)}` on {args.cpu or cpu}, {minutes:.1f} min in all (the teacher, A "
        f"and B trained once per seed, reused by the later runs; the first run's wall time includes them). "
        f"Teacher test accuracy: {mean_std(teacher)} %.", "", *rows, "", "The C that trained:", "", *plans, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], help="a config override for every run")
    parser.add_argument("--cpu", default="", help="the CPU's name for the report (lscpu's model name)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    args = parser.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kdchain-target-") as tmp:
        results = {s: run_seed(s, Path(tmp) / f"seed{s}", args.set) for s in args.seeds}
    text = report(results, args, (time.perf_counter() - t0) / 60)
    print(text)
    write_section(args.out, "target-marks", text)


if __name__ == "__main__":
    main()
