"""What a model costs: parameters, FLOPs, CPU latency at batch 1, serialized size."""

import copy
import io
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class Profile:
    params: int
    flops: int  # per image, forward pass; a multiply-add counts as 2
    latency_ms: float  # median CPU wall time of one forward at batch 1
    size_bytes: int  # bytes of the saved state_dict

    def as_dict(self) -> dict:
        return asdict(self)


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, *input_shape))
    return int(counter.get_total_flops())


def median_seconds(fn, runs: int, warmup: int, budget_s: float | None = None) -> float:
    """Median wall time of up to `runs` calls of `fn` after up to `warmup` untimed ones. With `budget_s`, warm-up
    stops once a quarter of it is spent and timing once all of it is (at least one call of each): a model that
    takes a second a call costs about `budget_s`, a small one gets its `runs`."""
    start = time.perf_counter()
    budget = float("inf") if budget_s is None else budget_s
    for _ in range(warmup):
        fn()
        if time.perf_counter() - start > budget / 4:
            break
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget:
            break
    return statistics.median(times)


def latency_ms(model: nn.Module, input_shape: tuple[int, ...], runs: int = 30, warmup: int = 5,
               threads: int = 1, budget_s: float | None = None) -> float:
    """Median of `runs` timed forwards at batch 1 after `warmup` (within `budget_s` seconds), on `threads` CPU
    threads (a deployment box)."""
    x = torch.randn(1, *input_shape)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return median_seconds(lambda: model(x), runs, warmup, budget_s) * 1000
    finally:
        torch.set_num_threads(old_threads)


def size_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def profile(model: nn.Module, input_shape: tuple[int, ...], runs: int = 30, budget_s: float | None = None) -> Profile:
    """Measured on a CPU copy in eval mode; the model passed in is left as it was."""
    cpu = copy.deepcopy(model).cpu().eval()
    return Profile(params=sum(p.numel() for p in cpu.parameters()), flops=count_flops(cpu, input_shape),
                   latency_ms=latency_ms(cpu, input_shape, runs, budget_s=budget_s), size_bytes=size_bytes(cpu))
