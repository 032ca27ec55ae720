"""How hard is `marks`? Test accuracy of a mid-size CNN and of a ~20k-parameter CNN trained on labels alone,
per difficulty. Usage: python bench/marks_tune.py [difficulty ...] [--train N] [--epochs E]"""

import argparse
import time

import torch

from kdchain.data import load_data
from kdchain.data.sources.marks import MarksData
from kdchain.distill import evaluate, fit
from kdchain.distill.losses import DistillLoss
from kdchain.losses.ce import CeLoss
from kdchain.models import build_model, count_params
from kdchain.models.families.cnn import CnnArch
from kdchain.spec import TrainSpec

MODELS = {"mid": CnnArch(channels=[32, 64, 128], convs_per_stage=2), "small": CnnArch(channels=[16, 32, 48])}

parser = argparse.ArgumentParser()
parser.add_argument("difficulty", nargs="*", type=float, default=[0.8])
parser.add_argument("--train", type=int, default=10000)
parser.add_argument("--epochs", type=int, default=8)
parser.add_argument("--threads", type=int, default=1)
args = parser.parse_args()
for d in args.difficulty:
    data = load_data(MarksData(train_size=args.train, val_size=1000, test_size=2000, difficulty=d), seed=0)
    for name, arch in MODELS.items():
        torch.manual_seed(0)
        model = build_model(arch, 10, 3)
        t0 = time.perf_counter()
        fit(model, None, DistillLoss([CeLoss()]), data, TrainSpec(epochs=args.epochs, lr=3e-3, batch_size=128,
                                                                  threads=args.threads), seed=0)
        print(f"difficulty {d}: {name} cnn {count_params(model):,} params, test accuracy "
              f"{evaluate(model, data.test):.2%} ({time.perf_counter() - t0:.0f} s)", flush=True)
