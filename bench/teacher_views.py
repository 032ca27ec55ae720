"""One student's epochs with the teacher live against stored views (`train.teacher_views`, the FKD recipe), with
augmentation on (marks: crop 2 + flip), on three teacher -> student pairs: the marks chain's first link
(its teacher -> A pruned to half width), the marks teacher -> a C-size student (14x fewer parameters), and the
CIFAR chain's ResNet-56 -> ResNet-20 (configs/cifar10-resnet-chain.yaml) on marks images. The teachers are
untrained (only time is measured). Prints seconds per epoch, the one-off cost of the K views, and the epochs
after which the views have paid for themselves.

    python bench/teacher_views.py [--images 5000] [--views 4] [--epochs 2]
"""

import argparse
import time

import torch
from _common import ROOT

from kdchain.data import load_data
from kdchain.distill import fit
from kdchain.models import build_model
from kdchain.models.families.cnn import CnnArch
from kdchain.models.families.resnet import ResnetArch
from kdchain.resolve import resolve_chain
from kdchain.spec import load_spec
from kdchain.students import build_loss


def epoch_seconds(student_arch, teacher, gen, data, views: int, epochs: int) -> tuple[float, float, str]:
    """(seconds per training epoch, seconds to compute the views, how the teacher's outputs were had)."""
    torch.manual_seed(1)
    student = build_model(student_arch, data.num_classes, data.input_shape[0])
    loss = build_loss(gen, student, teacher, data.input_shape)
    train = gen.train.model_copy(update={"epochs": epochs, "teacher_views": views})
    result = fit(student, teacher, loss, data, train, seed=1)
    return sum(r.seconds for r in result.history) / epochs, result.cache_seconds, result.teacher


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    spec = load_spec(ROOT / "configs" / "marks-chain.yaml", [f"data.train_size={args.images}"])
    gens = resolve_chain(spec)
    data = load_data(spec.data, spec.seed)
    teacher_arch = spec.teacher.model
    pairs = [("marks teacher -> A (half width)", teacher_arch, CnnArch(channels=[16, 32, 64], convs_per_stage=2)),
             ("marks teacher -> C size", teacher_arch, CnnArch(channels=[8, 16, 32], convs_per_stage=2)),
             ("ResNet-56 -> ResNet-20", ResnetArch(depth=56), ResnetArch(depth=20))]
    print(f"{args.images} marks images at 32x32, crop 2 + flip, {args.views} views, {args.epochs} epochs each, "
          f"batch {gens[1].train.batch_size}")
    print(f"{'pair':<32} {'live s/ep':>9} {'views s/ep':>10} {'per epoch':>9} {'views once s':>12} {'pays after':>10}")
    for name, t_arch, s_arch in pairs:
        torch.manual_seed(0)
        teacher = build_model(t_arch, data.num_classes, data.input_shape[0]).eval()
        t0 = time.perf_counter()
        live, _, how_live = epoch_seconds(s_arch, teacher, gens[1], data, 0, args.epochs)
        stored, once, how = epoch_seconds(s_arch, teacher, gens[1], data, args.views, args.epochs)
        assert how_live.startswith("live") and how.startswith("stored views"), (how_live, how)
        saved = live - stored
        pays = f"{once / saved:.1f} ep" if saved > 0 else "never"
        print(f"{name:<32} {live:9.2f} {stored:10.2f} {live / stored:8.2f}x {once:12.2f} {pays:>10}  "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
