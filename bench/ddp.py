"""Training throughput (images/s) of one generation with 1 and with 2 (or --nproc) data-parallel processes
(train.distributed, gloo on the CPU), and what launching the ranks costs.

    python bench/ddp.py [--config configs/digits-chain.yaml] [--size 16] [--epochs 4] [--nproc 2] [--cores 2]

Both runs get the same cores (--cores, default all): one process with that many torch threads, the ranks with
cores / nproc threads each (what kdchain gives them by default, from the cores free at launch).

The digits-chain teacher, trained by kdchain.chain.train_generation exactly as `kdchain run` trains it. Throughput
is training images / epoch seconds (an epoch's steps and its validation pass), the median over epochs 2.. (epoch 1
warms up); launch = wall time of the whole call minus the epochs (spawning and importing the ranks, rendezvous,
teacher-side setup, and the rank-0 measurements after training). Prints `uptime`: on a shared machine the figure
that carries is the ratio.
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import DEFAULT_CONFIG

from kdchain.chain import train_generation
from kdchain.data import load_data
from kdchain.distill import free_cores
from kdchain.spec import load_spec


def measure(config: str, size: int, epochs: int, nproc: int, threads: int,
            extra: list[str] = ()) -> tuple[float, float, float]:
    """(images/s, launch seconds, test accuracy) of the teacher trained with `nproc` processes; `extra`: more
    --set overrides (bench/gpu.py: the data set, device=cuda)."""
    overrides = [f"data.image_size={size}", *extra, f"teacher.train.epochs={epochs}",
                 f"teacher.train.distributed.nproc={nproc}", f"teacher.train.threads={threads}"]
    spec = load_spec(config, overrides)
    images = len(load_data(spec.data, spec.seed).train)
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        outcome, _ = train_generation(spec, 0, None, Path(tmp), lambda r: seconds.append(r.seconds))
        wall = time.perf_counter() - t0
    return images / statistics.median(seconds[1:] or seconds), wall - sum(seconds), outcome.metrics["test_accuracy"]


def compare(config: str, size: int, epochs: int, nproc: int, threads_of, label, extra: list[str] = ()) -> None:
    """Print images/s, launch cost and accuracy with 1 and `nproc` processes, and the ratio (also bench/gpu.py)."""
    rows = {n: measure(config, size, epochs, n, threads_of(n), extra) for n in (1, nproc)}
    for n, (ips, launch, acc) in rows.items():
        print(f"  {label(n)}: {ips:6.0f} images/s   launch + after-training {launch:5.1f} s   test accuracy {acc:.4f}")
    print(f"ratio {nproc} : 1 = {rows[nproc][0] / rows[1][0]:.2f}x images/s; load after {os.getloadavg()[0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--size", type=int, default=16, help="digits image size")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--cores", type=int, default=os.cpu_count(), help="torch threads of all processes together")
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores, {free_cores(0.5)} free now; load {os.getloadavg()[0]:.2f}; torch "
          f"{torch.__version__}; digits-chain teacher at {args.size}x{args.size}, {args.epochs} epochs")
    compare(args.config, args.size, args.epochs, args.nproc, lambda n: max(1, args.cores // n),
            lambda n: f"{n} process{'es' if n > 1 else '  '} x {max(1, args.cores // n)} threads")

if __name__ == "__main__":
    main()
