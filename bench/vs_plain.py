"""`kdchain run` against bench/plain_chain.py (Dataset + DataLoader, teacher forward every batch, no cache):
same config, epochs, seed, data, threads. Prints wall-time ratio and test-accuracy difference per generation.

    python bench/vs_plain.py [--config configs/digits-chain.yaml] [--repeat 1]
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import DEFAULT_CONFIG, cli_run, timed_run


def chain_generations(store: Path) -> dict[str, dict]:
    """Per generation of the one chain run in `store`: MLflow run wall time and test accuracy."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, "tags.`kdchain.kind` = 'generation'")
    return {r.data.tags["kdchain.generation_name"]: {"seconds": (r.info.end_time - r.info.start_time) / 1000,
                                                     "test_accuracy": r.data.metrics["test_accuracy"]}
            for r in runs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    for r in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="kdchain-vs-plain-") as tmp:
            tmp = Path(tmp)
            plain_wall, out = timed_run([sys.executable, str(Path(__file__).with_name("plain_chain.py")), args.config])
            plain = {d["name"]: d for d in map(json.loads, out.strip().splitlines())}
            chain_wall, _ = cli_run(Path(args.config), tmp)
            chain = chain_generations(tmp / "store" / "mlflow.db")
        print(f"repeat {r + 1}: plain script {plain_wall:.1f} s, kdchain run {chain_wall:.1f} s (whole processes): "
              f"kdchain {plain_wall / chain_wall:.2f}x faster (target >= 3x)")
        print(f"{'gen':>8} {'plain s':>8} {'chain s':>8} {'speed-up':>8} {'plain acc':>9} {'chain acc':>9} {'diff pts':>8}")
        for name, p in plain.items():
            c = chain[name]
            print(f"{name:>8} {p['seconds']:8.1f} {c['seconds']:8.1f} {p['seconds'] / c['seconds']:7.2f}x "
                  f"{p['test_accuracy']:9.2%} {c['test_accuracy']:9.2%} "
                  f"{(c['test_accuracy'] - p['test_accuracy']) * 100:+8.2f}", flush=True)


if __name__ == "__main__":
    main()
