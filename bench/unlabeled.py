"""Unlabeled images in the chain: marks with few labeled images and many unlabeled ones, against the same labeled
images alone and against all of them labeled (the ceiling). Issue target: C with unlabeled images above C labeled-only
by more than the seed std, and at least half way to the ceiling.

Per seed, three `kdchain run`s of configs/marks-chain.yaml's teacher -> A -> B -> C (C-labels dropped):
  labeled only   - data.train_size = --labeled
  + unlabeled    - the same, plus data.unlabeled.count = --unlabeled (their labels never read: the teacher trains on
                   the labeled images, the students' kd term reads all, their ce term the labeled ones)
  all labeled    - data.train_size = --labeled + --unlabeled (the ceiling)
Writes the section `quality:unlabeled` of docs/retraining.md.

    PREFECT_HOME=/tmp/prefect-unlabeled python bench/unlabeled.py --seeds 0 1 2 --cpu "AMD EPYC (AVX2, no bf16)"
"""

import argparse
import os
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
from target_sizing import generation_metrics, mean_std  # noqa: E402

GENERATIONS = ["teacher", "A", "B", "C"]
ARMS = ["labeled only", "+ unlabeled", "all labeled"]


def arm_config(args, seed: int, arm: str, folder: Path) -> Path:
    """Every generation trains the same number of steps in every arm: `--epochs` over all the images, scaled up
    for a generation that sees the labeled ones alone (the labeled-only arm, and the teacher of `+ unlabeled`)."""
    cfg = yaml.safe_load((ROOT / "configs" / "marks-chain.yaml").read_text())
    cfg["generations"] = cfg["generations"][:3]
    total = args.labeled + args.unlabeled
    size = total if arm == "all labeled" else args.labeled
    cfg["data"].update(train_size=size, val_size=args.val_size, test_size=args.test_size,
                       image_size=args.image_size, difficulty=args.difficulty)
    if arm == "+ unlabeled":
        cfg["data"]["unlabeled"] = {"count": args.unlabeled}
    scaled = round(args.epochs * total / args.labeled)
    cfg["teacher"]["train"]["epochs"] = args.epochs if arm == "all labeled" else scaled
    for part in cfg["generations"]:
        part["train"]["epochs"] = scaled if arm == "labeled only" else args.epochs
    slug = arm.replace(" ", "-").replace("+", "plus")
    cfg.update(seed=seed, workdir=str(folder / "work"), tracking={
        "uri": f"sqlite:///{folder / 'store' / 'mlflow.db'}", "experiment": f"{slug}-{seed}"})
    path = folder / f"{slug}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_seed(args, seed: int, folder: Path) -> dict:
    folder.mkdir(parents=True)
    out = {}
    for arm in ARMS:
        config = arm_config(args, seed, arm, folder)
        wall, _ = timed_run([sys.executable, "-m", "flows.cli", "run", str(config)])
        cfg = yaml.safe_load(config.read_text())
        metrics = generation_metrics(cfg["tracking"]["uri"], cfg["tracking"]["experiment"])
        out[arm] = {"acc": {g: metrics[g]["test_accuracy"] for g in GENERATIONS}, "wall": wall}
        print(f"seed {seed} {arm}: " + " ".join(f"{g} {100 * out[arm]['acc'][g]:.2f}" for g in GENERATIONS)
              + f" ({wall:.0f} s)", flush=True)
    return out


def report(results: dict[int, dict], args, minutes: float) -> str:
    seeds = sorted(results)
    acc = {(arm, g): [100 * results[s][arm]["acc"][g] for s in seeds] for arm in ARMS for g in GENERATIONS}
    rows = ["| generation | labeled only % | + unlabeled % | all labeled % (ceiling) | gain (points) | share of the "
            "way to the ceiling |", "|---|---|---|---|---|---|"]
    for g in GENERATIONS:
        low, mid, high = (statistics.mean(acc[(arm, g)]) for arm in ARMS)
        way = f"{(mid - low) / (high - low):.2f}" if high != low else "-"
        rows.append(f"| {g} | {mean_std(acc[('labeled only', g)])} | {mean_std(acc[('+ unlabeled', g)])} | "
                    f"{mean_std(acc[('all labeled', g)])} | {mid - low:+.2f} | {way} |")
    walls = ", ".join(f"{arm} {statistics.mean(results[s][arm]['wall'] for s in seeds):.0f} s" for arm in ARMS)
    return "\n".join([
        "## Unlabeled images (marks)", "",
        f"Measured by `PREFECT_HOME=... python bench/unlabeled.py --seeds {' '.join(map(str, seeds))} --labeled "
        f"{args.labeled} --unlabeled {args.unlabeled} --epochs {args.epochs} --image-size {args.image_size} "
        f"--difficulty {args.difficulty}` on {args.cpu or 'this CPU'}, {minutes:.1f} min in all. The marks family "
        f"(teacher -> A -> B -> C of configs/marks-chain.yaml at {args.image_size}x{args.image_size}, difficulty "
        f"{args.difficulty}) with {args.labeled:,} labeled training images, the same plus {args.unlabeled:,} "
        f"unlabeled ones (`data.unlabeled`), and all {args.labeled + args.unlabeled:,} labeled; test accuracy on "
        f"{args.test_size:,} test images, mean ± std over {len(seeds)} seeds. Every generation trains the same "
        f"number of steps in every arm ({args.epochs} epochs over {args.labeled + args.unlabeled:,} images, "
        f"{round(args.epochs * (args.labeled + args.unlabeled) / args.labeled)} over {args.labeled:,}). The teacher "
        "trains on labeled images alone, so its `+ unlabeled` row equals `labeled only` (the same steps on the same "
        "images).", "", *rows, "",
        f"Wall time per chain (`kdchain run`, Prefect start included): {walls}.", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--labeled", type=int, default=1000)
    parser.add_argument("--unlabeled", type=int, default=9000)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--difficulty", type=float, default=0.5)
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=4, help="epochs over all --labeled + --unlabeled images; a "
                        "generation that sees the labeled ones alone trains as many steps (more epochs)")
    parser.add_argument("--cpu", default="", help="the CPU's name for the report (lscpu's model name, bf16 or not)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "retraining.md")
    args = parser.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kdchain-unlabeled-") as tmp:
        results = {s: run_seed(args, s, Path(tmp) / f"seed{s}") for s in args.seeds}
    text = report(results, args, (time.perf_counter() - t0) / 60)
    print(text)
    write_section(args.out, "unlabeled", text)


if __name__ == "__main__":
    main()
