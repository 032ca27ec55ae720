"""What a chain asks of this machine, checked before anything trains: time and memory from the models' sizes, CUDA
when `device: cuda` (a writable workdir: kdchain.writable). Each problem is one line naming the field to change, with the figure.

The time check is a lower bound at optimistic rates (PEAK_FLOPS, STEP_SECONDS): a chain it refuses would run for
days on any hardware of that kind, so a legitimate long run is never refused by it.
"""

import math
import os

import torch
from torch.utils.flop_counter import FlopCounterMode

from kdchain.models import count_params

PEAK_FLOPS = {"cpu": 1e12, "cuda": 1e15}  # FLOP/s no single CPU / GPU exceeds for training these models
STEP_SECONDS = 1e-4  # the least a training step (forward, backward, optimizer) takes anywhere
EPOCH_SECONDS = 1e-3  # the least an epoch's validation pass and its MLflow metrics take
MAX_DAYS = 7.0  # a chain whose lower bound exceeds this is a typo (epochs: 1000000000), not a plan
TRAIN_BYTES_PER_PARAM = 16  # fp32 weights, gradients and two Adam moments


def device_kind(device: str) -> str:
    return "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"


def memory_bytes(kind: str) -> int | None:
    """Physical memory of this machine (cpu) or of the first GPU (cuda); None when unknown."""
    if kind == "cuda":
        return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def meta_flops(model: torch.nn.Module, input_shape: tuple) -> int:
    """FLOPs of one forward of one image, counted on the meta device (no memory, no compute)."""
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()  # BatchNorm in training mode refuses a batch of one image at 1x1
    try:
        with torch.inference_mode(), counter:
            model(torch.zeros(1, *input_shape, device="meta"))
    except (RuntimeError, NotImplementedError, ValueError):  # no meta kernel: the bound keeps its step costs
        return 0
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def _gb(n: float) -> str:
    return f"{n / 1e12:.1f} TB" if n >= 1e12 else f"{n / 1e9:.1f} GB"


def size_problems(gens, models, trained: list[bool], spec, input_shape) -> list[str]:
    """Lines for generations whose training would outgrow this machine's memory or run for days; `models` are
    built on the meta device, `trained[i]` is False for a teacher loaded with `from`."""
    from kdchain.resolve import arch_field

    kind = device_kind(spec.device)
    memory, images = memory_bytes(kind), spec.data.train_images()
    where = "this GPU" if kind == "cuda" else "this machine"
    problems, too_big = [], set()
    for g, model, trains in zip(gens, models, trained):
        params = count_params(model)
        need = params * (TRAIN_BYTES_PER_PARAM if trains else 4)
        derived = g.index > 0 and hasattr(spec.generations[g.index - 1].student, "derive")
        if memory and need > memory:
            too_big.add(g.index)
            if derived and g.index - 1 in too_big:  # said once, where the size is written
                continue
            problems.append(arch_field(g, f"{params / 1e9:.1f} G parameters need {_gb(need)} of memory "
                                           f"{'to train' if trains else 'for their weights'} but {where} has "
                                           f"{_gb(memory)}; lower its channels (or width)"))
            continue
        if not trains:
            continue
        steps = math.ceil(images / g.train.batch_size)
        compute = 3 * meta_flops(model, input_shape) * images / PEAK_FLOPS[kind]  # forward + backward, at peak
        per_epoch = EPOCH_SECONDS + max(steps * STEP_SECONDS, compute)
        days = g.train.epochs * per_epoch / 86400
        if days > MAX_DAYS:
            field = "teacher" if g.index == 0 else f"generations.{g.index - 1}"
            problems.append(f"{field}.train.epochs: {g.train.epochs:,} epochs of {images:,} images would take at "
                            f"least {days:,.0f} days on {kind} (over {MAX_DAYS:g} days); lower epochs")
    return problems


def distributed_problems(gens, device: str) -> list[str]:
    """`train.distributed` settings that cannot work on this machine, one line each (kdchain.distill.distributed)."""
    kind, problems = device_kind(device), []
    for g in gens:
        d, where = g.train.distributed, ("teacher" if g.index == 0 else f"generations.{g.index - 1}") + ".train"
        if d.backend == "nccl" and kind != "cuda":
            problems.append(f"{where}.distributed.backend: nccl needs CUDA, but this chain trains on the CPU "
                            f"(device: {device}{', no CUDA device found' if device != 'cpu' else ''}); set "
                            "backend: gloo (or auto)")
        if kind == "cuda" and d.nproc > 1 and torch.cuda.is_available() and d.nproc > torch.cuda.device_count():
            problems.append(f"{where}.distributed.nproc: {d.nproc} ranks need a GPU each, but "
                            f"{torch.cuda.device_count()} are visible; lower nproc")
        if d.nnodes > 1 and not d.rdzv_endpoint:
            problems.append(f"{where}.distributed.rdzv_endpoint: {d.nnodes} nodes must meet at one address; give "
                            "host:port of the first node")
        host, _, port = (d.rdzv_endpoint or "").rpartition(":")
        if d.rdzv_endpoint and not (host and port.isdigit() and 0 < int(port) < 65536):
            problems.append(f"{where}.distributed.rdzv_endpoint: {d.rdzv_endpoint!r} is not host:port "
                            "(e.g. 10.0.0.1:29400)")
        if d.nproc * d.nnodes > g.train.batch_size:
            problems.append(f"{where}.distributed.nproc: {d.nproc * d.nnodes} ranks share batches of "
                            f"{g.train.batch_size} images (each rank trains batch_size / nproc); raise "
                            "train.batch_size or lower nproc")
    return problems


def cuda_problem(device: str) -> str | None:
    if device == "cuda" and not torch.cuda.is_available():
        return ("device: cuda, but torch finds no CUDA device here (torch " + torch.__version__ + "); set "
                "`device: auto` or `cpu`, or run on a machine with an NVIDIA GPU and driver")
    return None
