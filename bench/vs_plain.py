"""`kdchain run` against bench/plain_chain.py (Dataset + DataLoader, teacher forward every batch, no cache):
same config, epochs, seed, data, threads. Prints wall-time ratio and test-accuracy difference per generation.

    python bench/vs_plain.py [--config configs/digits-chain.yaml] [--repeat 1 | --seeds 0 1 2] [--set KEY=VALUE ...]

`--set` overrides a field for both sides (e.g. `--set data.train_size=5000`); `--chain-set` only kdchain's (e.g.
`train.teacher_views`, which the plain script has no use for: it runs the teacher live, as the example does).
`--seeds 0 1 2` runs both sides per seed and prints each generation's test accuracy as mean ± std; `--reuse-plain`
takes the plain side of a config, `--set` and seed that ran before from mlruns/bench-plain/.

    python bench/vs_plain.py --config configs/marks-chain.yaml --seeds 0 1 2 --set data.train_size=5000 \
        --chain-set generations.A.train.teacher_views=4 --reuse-plain
"""

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import DEFAULT_CONFIG, ROOT, cli_run, timed_run

PLAIN_CACHE = ROOT / "mlruns" / "bench-plain"  # mlruns/ is ignored by git


def chain_generations(store: Path) -> dict[str, dict]:
    """Per generation of the one chain run in `store`: MLflow run wall time and test accuracy."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, "tags.`kdchain.kind` = 'generation'")
    return {r.data.tags["kdchain.generation_name"]: {"seconds": (r.info.end_time - r.info.start_time) / 1000,
                                                     "test_accuracy": r.data.metrics["test_accuracy"]}
            for r in runs}


def plain_side(config: str, sets: list[str], reuse: bool) -> tuple[float, dict]:
    """(wall seconds, {generation: {seconds, test_accuracy}}) of bench/plain_chain.py; every result is kept in
    PLAIN_CACHE, keyed by the config's text, the overrides and the seed, and read back with `reuse`."""
    key = hashlib.sha256(json.dumps([Path(config).read_text(), sets]).encode()).hexdigest()[:16]
    cached = PLAIN_CACHE / f"{key}.json"
    if reuse and cached.is_file():
        kept = json.loads(cached.read_text())
        print(f"plain side reused from {cached} (measured {kept['when']})")
        return kept["wall"], kept["generations"]
    wall, out = timed_run([sys.executable, str(Path(__file__).with_name("plain_chain.py")), config, *sets])
    generations = {d["name"]: d for d in map(json.loads, out.strip().splitlines())}
    PLAIN_CACHE.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps({"wall": wall, "generations": generations, "config": config, "sets": sets,
                                  "when": time.strftime("%Y-%m-%d %H:%M")}) + "\n")
    return wall, generations


def mean_std(values: list[float]) -> str:
    m = statistics.mean(values) * 100
    return f"{m:.2f} ± {statistics.stdev(values) * 100:.2f}" if len(values) > 1 else f"{m:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="run both sides once per seed and print each generation's test accuracy as mean ± std")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    ap.add_argument("--chain-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field for kdchain's side only (e.g. fewer epochs, to compare at equal accuracy)")
    ap.add_argument("--reuse-plain", action="store_true",
                    help=f"take the plain side's result from {PLAIN_CACHE} when the same config, --set and seed "
                         "ran before (its time was measured then; the plain script is deterministic otherwise)")
    args = ap.parse_args()
    seeds = args.seeds or [None] * args.repeat
    walls, accs = {"plain": [], "chain": []}, {"plain": {}, "chain": {}}
    for r, seed in enumerate(seeds):
        sets = [a for kv in args.set + ([f"seed={seed}"] if seed is not None else []) for a in ("--set", kv)]
        with tempfile.TemporaryDirectory(prefix="kdchain-vs-plain-") as tmp:
            tmp = Path(tmp)
            plain_wall, plain = plain_side(args.config, sets, args.reuse_plain)
            chain_sets = sets + [a for kv in args.chain_set for a in ("--set", kv)]
            chain_wall, _ = cli_run(Path(args.config), tmp, chain_sets)
            chain = chain_generations(tmp / "store" / "mlflow.db")
        walls["plain"].append(plain_wall)
        walls["chain"].append(chain_wall)
        label = f"seed {seed}" if seed is not None else f"repeat {r + 1}"
        print(f"{label}: plain script {plain_wall:.1f} s, kdchain run {chain_wall:.1f} s (whole processes): "
              f"kdchain {plain_wall / chain_wall:.2f}x faster (target >= 3x)")
        print(f"{'gen':>8} {'plain s':>8} {'chain s':>8} {'speed-up':>8} {'plain acc':>9} {'chain acc':>9} {'diff pts':>8}")
        for name, p in plain.items():
            c = chain[name]
            accs["plain"].setdefault(name, []).append(p["test_accuracy"])
            accs["chain"].setdefault(name, []).append(c["test_accuracy"])
            print(f"{name:>8} {p['seconds']:8.1f} {c['seconds']:8.1f} {p['seconds'] / c['seconds']:7.2f}x "
                  f"{p['test_accuracy']:9.2%} {c['test_accuracy']:9.2%} "
                  f"{(c['test_accuracy'] - p['test_accuracy']) * 100:+8.2f}", flush=True)
    if len(seeds) > 1:
        plain_s, chain_s = sum(walls["plain"]), sum(walls["chain"])
        print(f"all {len(seeds)} runs: plain {plain_s:.1f} s, kdchain {chain_s:.1f} s: "
              f"kdchain {plain_s / chain_s:.2f}x "
              "faster; test accuracy %, mean ± std:")
        print(f"{'gen':>8} {'plain':>14} {'kdchain':>14}")
        for name in accs["plain"]:
            print(f"{name:>8} {mean_std(accs['plain'][name]):>14} {mean_std(accs['chain'][name]):>14}")


if __name__ == "__main__":
    main()
