"""A family kept current as its data drifts: the stale champion family, a full retrain and a warm retrain, scored on
the new data's test split, per generation (issue: warm within 0.3 points of full in <= 1/4 of its wall time, both
above the stale family by more than the seed std).

Per seed, in one store and workdir: `kdchain retrain --full` trains the marks family teacher -> A -> B -> C at
difficulty --old (its champion: version 1); the data then drifts to --new (the same generator, harder images). The
stale arm scores version 1's family on the new test split; `kdchain retrain --warm` starts every generation from
that family (retrain.epochs_share of its epochs); `kdchain retrain --full` trains the family from the start on the
new data. Wall times are the commands' (Prefect start included, the same for both). Writes the section
`quality:retrain-drift` of docs/retraining.md.

    PREFECT_HOME=/tmp/prefect-drift python bench/retrain_drift.py --seeds 0 1 2 --cpu "AMD EPYC (AVX2, no bf16)"
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
ARMS = ["stale", "warm", "full"]


def family_config(args, seed: int, difficulty: float, folder: Path, uri: str) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "marks-chain.yaml").read_text())
    cfg["generations"] = cfg["generations"][:3]  # A, B, C (C-labels is not part of the family)
    cfg["data"].update(train_size=args.train_size, val_size=args.val_size, test_size=args.test_size,
                       difficulty=difficulty)
    for part in [cfg["teacher"], *cfg["generations"]]:
        part["train"]["epochs"] = args.epochs
    cfg.update(seed=seed, workdir=str(folder / "work"), retrain={"epochs_share": args.share},
               tracking={"uri": uri, "experiment": f"drift-{seed}", "register_as": f"drift-{seed}"})
    path = folder / f"difficulty-{difficulty}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def stale_scores(config: Path, uri: str, name: str, cache: Path) -> dict[str, float]:
    """The champion family (version 1) scored on the data as it is now: what keeps serving without a retrain."""
    from mlflow import MlflowClient

    from kdchain.scoring import score_checkpoint
    from kdchain.spec import load_spec
    from kdchain.tracking import fetch_checkpoint

    spec = load_spec(config)
    tags = MlflowClient(uri).get_model_version(name, "1").tags
    return {g: score_checkpoint(spec, fetch_checkpoint(tags[f"kdchain.family.{g}"], uri, cache))["test_accuracy"]
            for g in GENERATIONS}


def run_seed(args, seed: int, folder: Path) -> dict:
    uri = f"sqlite:///{folder / 'store' / 'mlflow.db'}"
    folder.mkdir(parents=True)
    retrain = [sys.executable, "-m", "flows.cli", "retrain"]
    first, _ = timed_run([*retrain, str(family_config(args, seed, args.old, folder, uri)), "--full"])
    new = family_config(args, seed, args.new, folder, uri)
    out = {"acc": {"stale": stale_scores(new, uri, f"drift-{seed}", folder / "cache")}, "wall": {"first": first}}
    for arm in ("warm", "full"):  # warm first: it starts from version 1 wherever the champion is afterwards
        out["wall"][arm], _ = timed_run([*retrain, str(new), f"--{arm}"])
        metrics = generation_metrics(uri, f"drift-{seed}")
        out["acc"][arm] = {g: metrics[g]["test_accuracy"] for g in GENERATIONS}
    print(f"seed {seed}: " + "; ".join(f"{arm} " + " ".join(f"{g} {100 * out['acc'][arm][g]:.2f}" for g in GENERATIONS)
                                       for arm in ARMS)
          + f"; wall warm {out['wall']['warm']:.0f} s, full {out['wall']['full']:.0f} s", flush=True)
    return out


def report(results: dict[int, dict], args, minutes: float) -> str:
    seeds = sorted(results)
    acc = {(arm, g): [100 * results[s]["acc"][arm][g] for s in seeds] for arm in ARMS for g in GENERATIONS}
    rows = ["| generation | stale % | warm % | full % | warm - full (points) | warm - stale | full - stale |",
            "|---|---|---|---|---|---|---|"]
    for g in GENERATIONS:
        diff = {pair: statistics.mean(a - b for a, b in zip(acc[(pair[0], g)], acc[(pair[1], g)]))
                for pair in (("warm", "full"), ("warm", "stale"), ("full", "stale"))}
        rows.append(f"| {g} | {mean_std(acc[('stale', g)])} | {mean_std(acc[('warm', g)])} | "
                    f"{mean_std(acc[('full', g)])} | {diff[('warm', 'full')]:+.2f} | {diff[('warm', 'stale')]:+.2f} | "
                    f"{diff[('full', 'stale')]:+.2f} |")
    wall = {arm: [results[s]["wall"][arm] for s in seeds] for arm in ("first", "warm", "full")}
    ratio = statistics.mean(w / f for w, f in zip(wall["warm"], wall["full"]))
    flags = "".join(f" --{k.replace('_', '-')} {getattr(args, k)}" for k in ("old", "new", "train_size", "epochs",
                                                                             "share"))
    return "\n".join([
        "## Retraining as the data drifts: stale, warm, full (marks)", "",
        f"Measured by `PREFECT_HOME=... python bench/retrain_drift.py --seeds {' '.join(map(str, seeds))}{flags}` on "
        f"{args.cpu or 'this CPU'}, {minutes:.1f} min in all. The family (teacher -> A -> B -> C, configs/"
        f"marks-chain.yaml at {args.train_size:,} training images, {args.epochs} epochs a generation) is trained at "
        f"difficulty {args.old}; the data then drifts to {args.new}. Test accuracy on the new test split "
        f"({args.test_size:,} images), mean ± std over {len(seeds)} seeds; the warm retrain trains "
        f"{args.share:g} of each generation's epochs.", "", *rows, "",
        f"Wall time per retrain (the command, Prefect start included): warm {mean_std(wall['warm'])} s, full "
        f"{mean_std(wall['full'])} s; warm / full = {ratio:.2f}. The first family took {mean_std(wall['first'])} s.",
        ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--old", type=float, default=0.5, help="the difficulty the family is first trained at")
    parser.add_argument("--new", type=float, default=0.8, help="the difficulty the data drifts to")
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=8, help="epochs of every generation in a full training")
    parser.add_argument("--share", type=float, default=0.25, help="retrain.epochs_share of the warm retrain")
    parser.add_argument("--cpu", default="", help="the CPU's name for the report (lscpu's model name, bf16 or not)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "retraining.md")
    args = parser.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kdchain-drift-") as tmp:
        results = {s: run_seed(args, s, Path(tmp) / f"seed{s}") for s in args.seeds}
    text = report(results, args, (time.perf_counter() - t0) / 60)
    print(text)
    write_section(args.out, "retrain-drift", text)


if __name__ == "__main__":
    main()
