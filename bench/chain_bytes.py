"""Bytes one chain run leaves on disk, and how many copies of each generation's weights that is.

    python bench/chain_bytes.py [CONFIG] [--set key=value ...]
    python bench/chain_bytes.py configs/seed-vgg19-cifar10.yaml --seed-stand-in

`--seed-stand-in`: the seed config's inputs made small under --dir (8 training and 4 test CIFAR-format images, an
untrained VGG19's state dict as TORCH_HOME's vgg19-dcbb9e9d.pth; tests/conftest.py's seed_stand_in), 1 epoch each.

Runs `kdchain run` on a fresh store and workdir under /tmp, then sums the files of the workdir (checkpoints,
ONNX files) and of the MLflow artifact root (logged models, checkpoint and ONNX artifacts) per generation folder,
and divides by the generation's weights (its checkpoint's state_dict bytes): "copies" should be at
most 2 (one in the workdir, one in MLflow).
"""

import argparse
import collections
import shutil
import sys
from pathlib import Path

import torch
from _common import DEFAULT_CONFIG, ENV, cli_run

WEIGHTS = {"workdir: checkpoints", "workdir: onnx", "mlflow: logged model weights", "mlflow: checkpoint artifacts",
           "mlflow: onnx artifacts"}


def kind_of(f: Path, work: Path) -> str:
    parts = f.parts
    if work in f.parents:
        return {".pt": "workdir: checkpoints", ".onnx": "workdir: onnx"}.get(f.suffix, "workdir: other")
    if "models" in parts and "code" in parts:
        return "mlflow: logged model code (kdchain)"
    if "models" in parts and f.name == "model.pth":
        return "mlflow: logged model weights"
    if "checkpoint" in parts:
        return "mlflow: checkpoint artifacts"
    if "onnx" in parts:
        return "mlflow: onnx artifacts"
    return "mlflow: database" if f.suffix == ".db" else "mlflow: other (plots, tables, metadata)"


def weights_bytes(checkpoint: Path) -> int:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return sum(v.numel() * v.element_size() for v in state.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG))
    parser.add_argument("--set", action="append", default=[], dest="sets")
    parser.add_argument("--dir", default="/tmp/kdchain-chain-bytes")
    parser.add_argument("--seed-stand-in", action="store_true")
    args = parser.parse_args()
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    env = None
    if args.seed_stand_in:
        from tests.conftest import seed_stand_in

        args.sets = seed_stand_in(root / "inputs") + args.sets
        env = {**ENV, "TORCH_HOME": str(root / "inputs" / "torch")}
    extra = [a for s in args.sets for a in ("--set", s)]
    cli_run(Path(args.config), root, extra, env)
    work = root / "work"
    gens = {p.name: p for p in work.glob("*/*") if (p / "model.pt").is_file()}
    by_place = collections.Counter()
    for f in (p for p in root.rglob("*") if p.is_file() and root / "inputs" not in p.parents):
        by_place[kind_of(f, work)] += f.stat().st_size
    print(f"{'generation':<28} {'weights':>12} {'workdir':>12} {'copies':>7}")
    total_weights = 0
    for name, folder in sorted(gens.items()):
        w = weights_bytes(folder / "model.pt")
        total_weights += w
        here = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        print(f"{name:<28} {w:12,d} {here:12,d} {here / w:7.2f}")
    for kind, n in sorted(by_place.items()):
        print(f"{kind:<34} {n:12,d} B")
    weights = sum(n for kind, n in by_place.items() if kind in WEIGHTS)
    print(f"all weights once {total_weights:,d} B; files holding weights {weights:,d} B: "
          f"{weights / total_weights:.2f} copies per chain run")


if __name__ == "__main__":
    sys.exit(main())
