"""Test accuracy of a student distilled with the teacher-output cache against the same student with the teacher
run live every batch (the target: within 0.3 points). Same seed, data and epochs; one process.

    python bench/cache_accuracy.py [--config configs/digits-chain.yaml] [--generation A] [--seeds 0 1 2]
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdchain.chain import train_generation  # noqa: E402
from kdchain.spec import load_spec  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "digits-chain.yaml"))
parser.add_argument("--generation", default="A")
parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
args = parser.parse_args()

diffs = []
for seed in args.seeds:
    with tempfile.TemporaryDirectory() as tmp:
        spec = load_spec(args.config, [f"seed={seed}"])
        index = spec.generation_names().index(args.generation)
        teacher_ckpt = Path(tmp) / "teacher"
        train_generation(spec, 0, None, teacher_ckpt)
        acc = {}
        for mode in ("on", "off"):
            s = load_spec(args.config, [f"seed={seed}", f"generations.{args.generation}.train.cache={mode}"])
            outcome, _ = train_generation(s, index, teacher_ckpt / "model.pt", Path(tmp) / mode)
            acc[mode] = outcome.metrics["test_accuracy"]
        diffs.append(100 * (acc["on"] - acc["off"]))
        print(f"seed {seed}: {args.generation} cached {acc['on']:.2%}, live {acc['off']:.2%}, "
              f"difference {diffs[-1]:+.2f} points")
print(f"largest |cached - live| = {max(abs(d) for d in diffs):.2f} points over {len(diffs)} seeds (target <= 0.3)")
