"""A pruned architecture (kind `pruned`, not a family a config names): its base architecture with a pruning record
applied (or, without a record, a plan made concrete by pruning the base's initial weights on seeded noise). Built
without any weights, so checkpoints stay JSON + tensors; how the pruning itself works is kdchain.models.prune."""

import math
import os
from functools import lru_cache

import torch
from pydantic import TypeAdapter
from torch import nn

from kdchain.models.build import PRUNED, build_model, derive_arch, describe
from kdchain.models.prune import prune_model, replay
from kdchain.spec.base import SpecError, canonical_json
from kdchain.spec.models import Derive, Prune, PrunedArch


@lru_cache(maxsize=1)
def any_arch() -> TypeAdapter:
    """Any architecture, a pruned one included (the union is built once every family is registered)."""
    from kdchain.spec.unions import AnyArch

    return TypeAdapter(AnyArch)


def trainable(arch):
    """The base a pruned model is built on: a student trains all its weights, so the teacher's freeze is dropped."""
    if arch.kind == "pruned":
        return arch.model_copy(update={"base": trainable(arch.base)})
    if getattr(arch, "freeze", None):  # torchvision and timm teachers may freeze parts
        return arch.model_copy(update={"freeze": []})
    return arch


@lru_cache(maxsize=32)
def planned(arch_json: str, num_classes: int, in_channels: int, size: int = 32) -> PrunedArch:
    """A plan made concrete: the base's initial weights (seed 0) pruned on seeded noise batches, on the CPU. A plan
    sized by `prune.target`: the largest that meets it (kdchain.sizing; SpecError when none does)."""
    arch = any_arch().validate_json(arch_json)
    if arch.prune.target is not None:
        return noise_plans(arch_json, num_classes, in_channels, size)[0].arch
    return _on_noise(arch, num_classes, in_channels, size, lambda base, prune_fn: prune_fn(arch)[1])


@lru_cache(maxsize=8)
def noise_plans(arch_json: str, num_classes: int, in_channels: int, size: int = 32) -> list:
    """The plans of kdchain.sizing that meet a target-sized arch's target, made on the base's initial weights."""
    from kdchain.sizing import none_meets, plans_meeting

    arch = any_arch().validate_json(arch_json)

    def sized(base, prune_fn):
        shape = (in_channels, *_image_size(base, size))
        plans = plans_meeting(prune_fn, arch, shape)
        if not plans:
            raise none_meets(arch, describe(arch.base))
        for plan in plans:
            plan.arch = plan.arch.model_copy(update={"prune": plan.arch.prune.model_copy(
                update={"recovery_batches": arch.prune.recovery_batches, "importance": arch.prune.importance})})
        return plans
    return _on_noise(arch, num_classes, in_channels, size, sized)


def _image_size(base: nn.Module, size: int) -> tuple[int, int]:
    native = getattr(getattr(base, "patch_embed", None), "img_size", None)  # a ViT takes one image size only
    return tuple(native) if isinstance(native, (tuple, list)) else (size, size)


def _on_noise(arch: PrunedArch, num_classes: int, in_channels: int, size: int, use):
    """`use(base, prune_fn)` with the base's initial weights (seed 0) and `prune_fn(arch)` -> (model, concrete
    arch): the base pruned on seeded noise batches, on the CPU, the arch's own prune settings in the record."""
    gen = torch.Generator().manual_seed(0)
    _noise_fits(arch.base, num_classes, in_channels, size)
    with torch.device("cpu"), torch.random.fork_rng():
        torch.manual_seed(0)
        base = build_model(arch.base, num_classes, in_channels)
        height, width = _image_size(base, size)

        def noise(n: int):
            return [(torch.randn(8, in_channels, height, width, generator=gen),
                     torch.randint(0, num_classes, (8,), generator=gen)) for _ in range(n)]

        def prune_fn(plan: PrunedArch):
            # uniform per-group ratios give the same channel counts whatever the importance; no recovery on noise
            quick = plan.prune.model_copy(update={"recovery_batches": 0, "importance": "bn_scale" if
                                                  plan.prune.importance == "bn_scale" else "l2"})
            model, concrete = prune_model(base, arch.base, quick, noise, arch.keep, num_classes, in_channels)
            return model, concrete.model_copy(update={"prune": plan.prune})
        return use(base, prune_fn)


def _noise_fits(base_arch, num_classes: int, in_channels: int, size: int, images: int = 8) -> None:
    """Raise SpecError when pruning `base_arch` on `images` noise images would not fit this machine's memory (a
    typo of 10**6 channels in `kdchain validate` must be one line, not a machine swapping to death): every
    module's output, summed, counted on the meta device."""
    with torch.device("meta"):
        base = build_model(base_arch, num_classes, in_channels).eval()
    total = 0

    def count(module, inputs, output):
        nonlocal total
        total += sum(t.numel() * t.element_size() for t in (output if isinstance(output, tuple) else (output,))
                     if isinstance(t, torch.Tensor))

    hooks = [m.register_forward_hook(count) for m in base.modules()]
    try:
        with torch.inference_mode():
            base(torch.zeros(images, in_channels, size, size, device="meta"))
    except (RuntimeError, NotImplementedError, ValueError):  # no meta kernel: nothing to say in advance
        return
    finally:
        for h in hooks:
            h.remove()
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if 2 * total > memory:  # the activations and a pruned copy's
        raise SpecError([f"model: pruning is planned on {images} noise images of its teacher's model, whose outputs "
                         f"need about {2 * total / 2**30:.0f} GB but this machine has {memory / 2**30:.0f} GB; "
                         "lower the teacher's channels"])


def _levels(arch) -> tuple[object, list[Prune]]:
    """(the unpruned root architecture, the pruning settings applied to it, first first)."""
    if arch.kind != "pruned":
        return arch, []
    root, levels = _levels(arch.base)
    return root, levels + [arch.prune]


def _kept_share(levels: list[Prune]) -> str:
    """The share of the root's channels kept (the product of every link's width), per stage where a link gave
    stage widths (`0.8/0.6/0.4`)."""
    staged = [p.stage_widths for p in levels if p.stage_widths]
    scalar = math.prod(p.width for p in levels if not p.stage_widths)
    if not staged or any(len(s) != len(staged[0]) for s in staged):
        return f"width {math.prod(p.mean_width() for p in levels):.3g}"
    return "stage widths " + "/".join(f"{scalar * math.prod(ws):.3g}" for ws in zip(*staged))


def describe_pruned(arch: PrunedArch) -> str:
    """`<root> pruned to width W` (or `stage widths a/b/c`), then the blocks removed so far (once pruned) or the
    depth asked for (a plan)."""
    root, levels = _levels(arch)
    text = f"{describe(root)} pruned to {_kept_share(levels)}"
    removed, node = 0, arch
    while node.kind == "pruned":
        removed += len((node.record or {}).get("removed", []))
        node = node.base
    if removed:
        return text + f", {removed} block{'s' if removed > 1 else ''} removed"
    depth = min(p.depth for p in levels)
    return text + (f", depth {depth:g}" if depth < 1 else "")


def derive_pruned(arch: PrunedArch, derive: Derive):
    """`derive` from a pruned teacher: its root family scaled by the widths and depths kept so far, times derive's."""
    root, levels = _levels(arch)
    width, depth = derive.width, derive.depth
    for p in levels:
        width, depth = width * p.mean_width(), depth * p.depth
    return derive_arch(root, derive.model_copy(update={"width": width, "depth": depth}))


def pruned_model(arch: PrunedArch, num_classes: int, in_channels: int) -> nn.Module:
    if arch.record is None:
        arch = planned(canonical_json(arch), num_classes, in_channels)
    return replay(build_model(trainable(arch.base), num_classes, in_channels), arch.record)


PRUNED.update(build=pruned_model, derive=derive_pruned, describe=describe_pruned)
