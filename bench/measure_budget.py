"""What measuring a big model costs with `measure:`'s budget: VGG19 (10-class head) at 224x224, random weights.

    python bench/measure_budget.py [--budget 10] [--threads 1]

Prints the seconds of the profile, the ONNX export, the check and the speed figures, as kdchain.chain runs them
after a generation trains (the check on as much of a 256-image batch as the budget allows).
"""

import argparse
import time

import torch
from _common import ROOT  # noqa: F401 - puts this checkout first on sys.path
from torchvision.models import vgg19

from kdchain.measure.export import check_onnx, export_onnx, fitting_batch, measure_speed
from kdchain.measure.profile import profile


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="/tmp/kdchain-measure-budget.onnx")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, shape = vgg19(num_classes=10).eval(), (3, 224, 224)
    t = [time.perf_counter()]
    costs = profile(model, shape, 30, args.budget)
    t.append(time.perf_counter())
    export_onnx(model, shape, args.out)
    t.append(time.perf_counter())
    check = torch.randn(256, *shape)[:fitting_batch(256, costs.latency_ms, args.budget)]
    diff = check_onnx(model, args.out, check)
    t.append(time.perf_counter())
    speed = measure_speed(model, args.out, shape, args.threads, eager_latency_ms=costs.latency_ms,
                          budget_s=args.budget)
    t.append(time.perf_counter())
    print(f"vgg19 224x224, budget {args.budget:g} s, {args.threads} thread(s): latency {costs.latency_ms:.0f} ms "
          f"(eager), {speed.latency_ms_onnx:.0f} ms (ONNX Runtime); throughput batch {speed.throughput_batch}; "
          f"check on {len(check)} images, max |diff| {diff:.2e}")
    for name, a, b in zip(("profile", "export", "check", "speed"), t, t[1:]):
        print(f"{name:>8}: {b - a:6.1f} s")
    print(f"   total: {t[-1] - t[0]:6.1f} s")


if __name__ == "__main__":
    main()
