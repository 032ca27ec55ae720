"""Images per second of the `marks` generator at 32x32 (the target: >= 20,000/s on a 2-core CPU).

Usage: python bench/marks_speed.py [--count N] [--threads T]. Prints the machine's load average too: on a
shared machine the figure falls with the other processes' load.
"""

import argparse
import os
import time

import torch

from kdchain.data.sources.marks import generate

parser = argparse.ArgumentParser()
parser.add_argument("--count", type=int, default=20000)
parser.add_argument("--size", type=int, default=32)
parser.add_argument("--threads", type=int, default=os.cpu_count())
parser.add_argument("--repeat", type=int, default=3)
args = parser.parse_args()
torch.set_num_threads(args.threads)
generate(512, args.size, 0.8, seed=0)  # warm-up
best = 0.0
for r in range(args.repeat):
    t0 = time.perf_counter()
    generate(args.count, args.size, 0.8, seed=r)
    best = max(best, args.count / (time.perf_counter() - t0))
print(f"marks {args.size}x{args.size}: {best:,.0f} images/s (best of {args.repeat} x {args.count:,}, "
      f"{args.threads} threads, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})")
