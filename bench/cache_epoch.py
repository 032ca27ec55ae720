"""Epoch time of cached KD against student-only training (and live KD), measured in one process, interleaved.

    python bench/cache_epoch.py [--config configs/digits-chain.yaml] [--generation A] [--epochs 3] [--repeat 3]

The teacher is trained briefly first (its accuracy does not change the cost of its forward pass).
"""

import argparse
import statistics

import torch
from _common import DEFAULT_CONFIG

from kdchain.data import load_data
from kdchain.distill import fit
from kdchain.losses.ce import CeLoss
from kdchain.models import build_model
from kdchain.resolve import resolve_chain
from kdchain.spec import load_spec
from kdchain.students import build_loss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--generation", default="A")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    spec = load_spec(args.config)
    gens = resolve_chain(spec)
    gen = next(g for g in gens if g.name == args.generation)
    data = load_data(spec.data, spec.seed)
    tgen = gens[gen.index - 1]
    teacher = build_model(tgen.arch, data.num_classes, data.input_shape[0])
    fit(teacher, None, build_loss(gens[0], teacher, None, data.input_shape), data,
        tgen.train.model_copy(update={"epochs": 1}))
    teacher.eval()

    def epoch_seconds(kind: str) -> tuple[float, float]:
        torch.manual_seed(0)
        student = build_model(gen.arch, data.num_classes, data.input_shape[0])
        terms = [CeLoss()] if kind == "student-only" else gen.distill
        g = gen.__class__(gen.index, gen.name, gen.arch, terms, gen.train)
        loss = build_loss(g, student, teacher, data.input_shape)
        cache = {"cached KD": "on", "live KD": "off"}.get(kind, "off")
        r = fit(student, teacher, loss, data, gen.train.model_copy(update={"epochs": args.epochs, "cache": cache}))
        # the first epoch pays one-off costs (allocations); medians of the rest, plus the cache fill once
        return statistics.median(h.seconds for h in r.history[1:] or r.history), r.cache_seconds

    kinds = ["student-only", "cached KD", "live KD"]
    times = {k: [] for k in kinds}
    fills = []
    for _ in range(args.repeat):
        for k in kinds:
            s, fill = epoch_seconds(k)
            times[k].append(s)
            if k == "cached KD":
                fills.append(fill)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"generation {gen.name} (teacher {tgen.name}), {torch.get_num_threads()} thread(s), "
          f"median epoch seconds over {args.repeat} interleaved repeats:")
    for k in kinds:
        print(f"  {k:>13}: {med[k]:.3f} s/epoch  (runs: {', '.join(f'{v:.3f}' for v in times[k])})")
    print(f"  cache fill once per generation: {statistics.median(fills):.3f} s")
    print(f"cached KD / student-only = {med['cached KD'] / med['student-only']:.2f} (target <= 1.15); "
          f"live KD / student-only = {med['live KD'] / med['student-only']:.2f}")


if __name__ == "__main__":
    main()
