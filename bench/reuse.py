"""The loop "change C's epochs, run again": the second run with reuse (teacher, A, B reused) against a full run
and against the same changed chain trained from scratch (`--fresh`, what every change cost before reuse).
Each is a whole `kdchain run` process on one fresh store, with its Prefect start-up.

    python bench/reuse.py [--config configs/digits-chain.yaml] [--set generations.C.train.epochs=25]
                          [--keep DIR] [--show]   (keep the store and workdir in DIR; print the second run's output)
"""

import argparse
import re
import sys
import tempfile
from pathlib import Path

from _common import DEFAULT_CONFIG, timed_run


def run(config: str, tmp: Path, extra: list[str]) -> tuple[float, dict[str, int], list[str], str]:
    """(wall seconds, epochs trained per generation, generations reused, stdout) of one `kdchain run`."""
    wall, out = timed_run([sys.executable, "-m", "flows.cli", "run", config,
                           "--tracking-uri", f"sqlite:///{tmp / 'store' / 'mlflow.db'}",
                           "--set", f"workdir={tmp / 'work'}", *extra])
    epochs: dict[str, int] = {}
    for name in re.findall(r"^\s*(\w+) epoch \d+/\d+", out, re.M):
        epochs[name] = epochs.get(name, 0) + 1
    return wall, epochs, re.findall(r"^\s*(\w+) already trained in an earlier run: reused", out, re.M), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--set", dest="change", default="generations.C.train.epochs=25",
                    help="the change of the second run (default: C's epochs)")
    ap.add_argument("--keep", type=Path, help="run in this folder and keep its store and workdir")
    ap.add_argument("--show", action="store_true", help="print the second run's output")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kdchain-reuse-") as tmp:
        tmp = args.keep.resolve() if args.keep else Path(tmp)
        full, full_epochs, _, _ = run(args.config, tmp, [])
        second, second_epochs, reused, out = run(args.config, tmp, ["--set", args.change])
        scratch, scratch_epochs, _, _ = run(args.config, tmp, ["--set", args.change, "--fresh"])
    if args.show:
        print(out)
    print(f"config {args.config}, change {args.change!r}; whole `kdchain run` processes, one store")
    print(f"  full run (nothing to reuse):      {full:6.1f} s  epochs trained {full_epochs}")
    print(f"  second run, change only:          {second:6.1f} s  epochs trained {second_epochs}, reused {reused}")
    print(f"  same change, from scratch --fresh:{scratch:6.1f} s  epochs trained {scratch_epochs}")
    print(f"  second run = {second / full:.0%} of the full run, {scratch / second:.1f}x faster than from scratch")


if __name__ == "__main__":
    main()
