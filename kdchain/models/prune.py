"""Structured pruning: a student that is its teacher with the least important channels and blocks removed, keeping
the teacher's surviving weights (torch-pruning's DepGraph traces which layers are coupled and scores the channels).

- depth (first): the removable blocks are the shape-preserving children of an nn.Sequential that hold a
  convolution (residual blocks, a cnn's or VGG's conv between two of the same width; a VGG-bn conv goes with its
  BatchNorm). Each is scored on a few seeded training batches by 1 - cos(input, output), the block importance of
  ShortGPT / Minitron, and the lowest are replaced by nn.Identity. Never a block that takes the image (the stem)
  or that a feature-loss tap names or contains (`PrunedArch.keep`).
- width: every prunable layer group keeps `width` of its channels, chosen by the importance, rounded to
  `round_to` (torch-pruning's BasePruner, uniform per group). The head's outputs (the classes) are never pruned.
  In the CIFAR ResNet family only the channels inside each basic block are: its zero-padding shortcuts tie the
  residual stream's channels in a way DepGraph does not trace.
- steps > 1: width is removed in equal steps; between two steps the student is distilled for `recovery_batches`
  batches from the unpruned model (KD at T = 4, AdamW 1e-3), so that the next step scores a model that works.

The result is a PrunedArch whose `record` (removed blocks, changed module attributes, changed tensor shapes)
rebuilds the model exactly from its base without any weights (the `pruned` family, kdchain.models.pruned):
checkpoints stay JSON + tensors (weights_only).
"""

import copy
from typing import Callable

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from kdchain.models.build import build_model, describe
from kdchain.models.families.resnet import BasicBlock, CifarResNet
from kdchain.models.families.torchvision import head_name
from kdchain.spec.base import SpecError, canonical_json
from kdchain.spec.models import Prune, PrunedArch

Batches = Callable[[int], list[tuple[torch.Tensor, torch.Tensor]]]  # n -> n seeded (x, y) training batches

IMPORTANCE = {
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
    "bn_scale": lambda: tp.importance.BNScaleImportance(),
    "random": lambda: tp.importance.RandomImportance(),
}


# ---------------------------------------------------------------------------------------------- depth


def removable_blocks(model: nn.Module, x: torch.Tensor) -> list[list[str]]:
    """Each removable block as the module names that become nn.Identity, in the order the forward pass runs them."""
    seen: dict[str, tuple] = {}  # name -> (input shape, output shape, takes the image)

    def hook(name):
        def record(module, args, out):
            if name not in seen and args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                seen[name] = (tuple(args[0].shape), tuple(out.shape), args[0] is x)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    order = {name: i for i, name in enumerate(seen)}
    blocks = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        kids = list(parent.named_children())
        for i, (child_name, child) in enumerate(kids):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if name not in seen or seen[name][2] or seen[name][0] != seen[name][1] or not _holds_conv(child):
                continue
            group = [name]
            if isinstance(child, nn.Conv2d) and i + 1 < len(kids) and isinstance(kids[i + 1][1], nn.BatchNorm2d):
                group.append(f"{parent_name}.{kids[i + 1][0]}" if parent_name else kids[i + 1][0])
            blocks.append(group)
    outer = [b for b in blocks if not any(b[0].startswith(o[0] + ".") for o in blocks)]  # a block, not its insides
    return sorted(outer, key=lambda b: order[b[0]])


def _holds_conv(module: nn.Module) -> bool:
    """A block a depth prune may remove: one holding a convolution, or a transformer block (its attention)."""
    if isinstance(module, nn.Conv2d):
        return module.groups == 1  # a depthwise conv alone is not a block
    return any(isinstance(m, nn.Conv2d) for m in module.modules()) or bool(attention_modules(module))


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """timm's attention modules (ViT, DeiT, ...): a `qkv` projection and the head count its forward reshapes by."""
    return [m for m in model.modules() if isinstance(getattr(m, "qkv", None), nn.Linear)
            and isinstance(getattr(m, "num_heads", None), int) and isinstance(getattr(m, "head_dim", None), int)]


def block_scores(model: nn.Module, blocks: list[list[str]], xs: list[torch.Tensor]) -> dict[str, float]:
    """1 - mean cosine similarity of each block's input and output (per sample, flattened) over the batches."""
    scores = {b[0]: 0.0 for b in blocks}
    inputs: dict[str, torch.Tensor] = {}
    handles = []
    for b in blocks:
        first, last = model.get_submodule(b[0]), model.get_submodule(b[-1])
        handles.append(first.register_forward_pre_hook(lambda m, args, key=b[0]: inputs.__setitem__(key, args[0])))
        handles.append(last.register_forward_hook(lambda m, args, out, key=b[0]: scores.__setitem__(
            key, scores[key] + 1 - F.cosine_similarity(inputs[key].flatten(1), out.flatten(1)).mean().item())))
    try:
        with torch.no_grad():
            for x in xs:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return {k: v / len(xs) for k, v in scores.items()}


def _covers(block: str, node: str) -> bool:
    return node == block or node.startswith(block + ".")


def drop_blocks(model: nn.Module, prune: Prune, xs: list[torch.Tensor], keep: list[str],
                follow: list[str] | None = None) -> list[str]:
    """Replace the least important removable blocks by nn.Identity; returns the module names replaced. `follow`:
    the blocks a plan made from these very weights removed, replaced as they are (no scoring: a near tie of two
    blocks' scores must not pick another block, and with it another size, than the plan measured)."""
    if follow is not None:
        for name in follow:
            model.set_submodule(name, nn.Identity())
        return list(follow)
    blocks = removable_blocks(model, xs[0])
    if not blocks:
        raise SpecError([f"model.prune.depth: {type(model).__name__} has no removable blocks (no shape-keeping conv "
                         "or residual block after the stem); use depth: 1.0"])
    free = [b for b in blocks if not any(_covers(name, node) for name in b for node in keep)]
    n_drop = min(len(free), round(len(blocks) * (1 - prune.depth)))
    scores = block_scores(model, free, xs)
    dropped = [name for b in sorted(free, key=lambda b: scores[b[0]])[:n_drop] for name in b]
    for name in dropped:
        model.set_submodule(name, nn.Identity())
    return dropped


# ---------------------------------------------------------------------------------------------- width


def ignored_layers(model: nn.Module, prune: Prune | None = None) -> list[nn.Module]:
    """Layers whose outputs keep every channel: the head, a CIFAR ResNet's residual stream, and a transformer's
    embedding (the stem that writes the residual stream) unless `prune.embed`."""
    ignored = [model.get_submodule(head_name(model))]
    stem = getattr(getattr(model, "patch_embed", None), "proj", None)
    if attention_modules(model) and isinstance(stem, nn.Module) and not (prune and prune.embed):
        ignored.append(stem)
    if isinstance(model, CifarResNet):
        ignored.append(model.conv1)
        for m in model.modules():
            if isinstance(m, BasicBlock):
                ignored += [m.conv2, m.shortcut]
    return ignored


def recover(student: nn.Module, teacher: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]],
            temperature: float = 4.0) -> None:
    """A short distillation between two pruning steps: KD from the unpruned model, AdamW 1e-3."""
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-3)
    student.train()
    for x, _ in data:
        with torch.no_grad():
            target = F.softmax(teacher(x) / temperature, 1)
        loss = F.kl_div(F.log_softmax(student(x) / temperature, 1), target, reduction="batchmean") * temperature ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    student.eval()


LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
          nn.Embedding, nn.PReLU)  # layers torch-pruning knows how to prune


def _unwrapped(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """Parameters held outside the layers torch-pruning knows (a ViT's class token and position embedding, a
    ConvNeXt block's layer scale): their last dimension is the channels', pruned with them."""
    owners = dict(model.named_modules())
    return [(p, p.dim() - 1) for name, p in model.named_parameters()
            if not isinstance(owners[name.rpartition(".")[0]], LAYERS)]


def stages(model: nn.Module, x: torch.Tensor, ignored: list[nn.Module]) -> list[tuple[str, list[nn.Module]]]:
    """The prunable layers (Conv2d, Linear; not `ignored`) grouped by the feature-map size of their outputs, in the
    order the forward pass first reaches each size, as (name, layers): `1/2` for maps at half the image's height;
    Linear layers (a transformer's blocks, a hidden classifier layer) are one stage, `tokens`."""
    found: dict[str, list[nn.Module]] = {}

    def hook(module, args, out):
        if isinstance(out, torch.Tensor) and module not in ignored:
            key = f"1/{x.shape[2] / out.shape[2]:g}" if isinstance(module, nn.Conv2d) else "tokens"
            if module not in found.setdefault(key, []):
                found[key].append(module)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return list(found.items())


def layer_widths(model: nn.Module, prune: Prune, x: torch.Tensor, ignored: list[nn.Module]) -> dict[nn.Module, float]:
    """Per prunable layer, the share of its channels `prune` keeps: its stage's stage width, else `prune.width`."""
    if not prune.stage_widths:
        return {m: prune.width for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    found = stages(model, x, ignored)
    if len(found) != len(prune.stage_widths):
        n, plural = len(found), "s" if len(found) > 1 else ""
        raise SpecError([f"model.prune.stage_widths: {type(model).__name__} has {n} stage{plural} (by output size: "
                         f"{', '.join(name for name, _ in found)}); give {n} width{plural}, not "
                         f"{len(prune.stage_widths)}"])
    return {m: w for (_, layers), w in zip(found, prune.stage_widths) for m in layers}


def rounded_ratios(model: nn.Module, widths: dict[nn.Module, float], ignored: list[nn.Module]
                   ) -> dict[nn.Module, float]:
    """Per layer, the pruning ratio that keeps round(C * width) of its C output channels, as `derive` does:
    torch-pruning keeps int(C * (1 - ratio)), the floor, which made a pruned C of the marks chain 7% smaller than
    the derived one; asking for the rounded count + 0.5 makes the floor land on it."""
    ratios = {}
    for m, width in widths.items():
        channels = getattr(m, "out_channels", None) or getattr(m, "out_features", None)
        if m not in ignored and channels:
            ratios[m] = 1 - min(channels, max(1, round(channels * width)) + 0.5) / channels
    return ratios


def prune_width(model: nn.Module, teacher: nn.Module, prune: Prune, data: list, sample: Batches) -> None:
    """Prune every layer group of `model` to `prune.width` (or its stage's width) of its channels, in
    `prune.steps` steps."""
    if prune.importance == "bn_scale" and not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                                  for m in model.modules()):
        raise SpecError(["model.prune.importance: bn_scale ranks channels by BatchNorm scales and this model has "
                         "no BatchNorm; use importance l2"])
    ignored = ignored_layers(model, prune)
    attention = attention_modules(model)
    heads = prune.attention == "heads"
    widths = layer_widths(model, prune, data[0][0][:2], ignored)
    head_width = widths[attention[0].qkv] if attention else prune.width
    pruner = tp.pruner.BasePruner(model, data[0][0][:2], importance=IMPORTANCE[prune.importance](),
                                  pruning_ratio=1 - prune.mean_width(), iterative_steps=prune.steps,
                                  pruning_ratio_dict=rounded_ratios(model, widths, ignored),
                                  ignored_layers=ignored, round_to=prune.round_to,
                                  unwrapped_parameters=_unwrapped(model),
                                  num_heads={m.qkv: m.num_heads for m in attention}, prune_num_heads=heads,
                                  prune_head_dims=not heads, head_pruning_ratio=1 - head_width if heads else 0.0)
    for step in range(prune.steps):
        if prune.importance == "taylor":  # weight x gradient of the cross-entropy on the seeded batches
            model.zero_grad()
            for x, y in data:
                F.cross_entropy(model(x), y).backward()
        pruner.step()
        for m in attention:  # the head count and size the forward reshapes by follow the pruned qkv
            m.num_heads = pruner.num_heads[m.qkv]
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
            if isinstance(getattr(m, "attn_dim", None), int):
                m.attn_dim = m.num_heads * m.head_dim
        if step + 1 < prune.steps and prune.recovery_batches:
            recover(model, teacher, sample(prune.recovery_batches))
    model.zero_grad(set_to_none=True)


def recalibrate_batch_norm(model: nn.Module, xs: list[torch.Tensor]) -> None:
    """Re-estimate BatchNorm statistics on the seeded batches: a layer whose inputs lost channels or blocks sees
    other statistics than the teacher's (BN recalibration, as in EagleEye, Li et al. 2020). Weights unchanged."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    model.train()
    with torch.no_grad():
        for x in xs:
            model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


# ---------------------------------------------------------------------------------------------- the record


def _attrs(module: nn.Module) -> dict:
    """The int and int-tuple attributes that shape a module: in/out channels, features, groups."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(module).items()
            if not k.startswith("_") and (type(v) is int or (isinstance(v, tuple) and v
                                                            and all(type(i) is int for i in v)))}


def make_record(before: nn.Module, after: nn.Module, removed: list[str]) -> dict:
    """What turns `before` into `after` without weights: removed blocks, changed attributes, changed shapes."""
    old = dict(before.named_modules())
    modules = {}
    for name, m in after.named_modules():
        if name in old and type(old[name]) is type(m):
            was = _attrs(old[name])
            changed = {k: v for k, v in _attrs(m).items() if was.get(k) != v}
            if changed:
                modules[name] = changed
    old_state = before.state_dict()
    tensors = {k: list(v.shape) for k, v in after.state_dict().items()
               if k in old_state and old_state[k].shape != v.shape}
    return {"removed": removed, "modules": modules, "tensors": tensors}


def replay(model: nn.Module, record: dict) -> nn.Module:
    """Apply a record to a freshly built base: same modules and shapes as the pruned model (values to be loaded)."""
    for name in record["removed"]:
        model.set_submodule(name, nn.Identity())
    for name, attrs in record["modules"].items():
        module = model.get_submodule(name)
        for k, v in attrs.items():
            setattr(module, k, tuple(v) if isinstance(v, list) else v)
    for key, shape in record["tensors"].items():
        owner, _, leaf = key.rpartition(".")
        module = model.get_submodule(owner)
        old = getattr(module, leaf)
        new = torch.zeros(shape, dtype=old.dtype, device=old.device)
        if leaf in module._parameters:
            module._parameters[leaf] = nn.Parameter(new, requires_grad=old.requires_grad)
        else:
            module._buffers[leaf] = new
    return model


# ---------------------------------------------------------------------------------------------- the student


class PlanMismatch(Exception):
    """A prune that was to follow a plan built another architecture (the teacher is not the one planned on)."""


def prune_model(teacher: nn.Module, teacher_arch, prune: Prune, sample: Batches, keep: list[str] = (),
                num_classes: int | None = None, in_channels: int | None = None,
                follow: dict | None = None) -> tuple[nn.Module, PrunedArch]:
    """A pruned copy of `teacher` (untouched) keeping its surviving weights, and the architecture that rebuilds it.
    `follow`: the record of a plan made from this teacher (a search's candidate): the same blocks are removed and
    the result must have the plan's shapes, or PlanMismatch. The channel counts of a width prune depend on the
    settings alone (uniform per group); which channels survive depends on the weights."""
    teacher = teacher.eval()
    model = copy.deepcopy(teacher)
    for m in model.modules():  # a frozen teacher's parts are pruned and trained like the rest (see `trainable`)
        m._forward_pre_hooks.clear()
        for p in m.parameters(recurse=False):
            p.requires_grad_(True)
    data = sample(max(prune.batches, 1))
    removed = (drop_blocks(model, prune, [x for x, _ in data], list(keep), follow and follow["removed"])
               if prune.depth < 1 else [])
    if prune.width < 1 or prune.stage_widths:
        prune_width(model, teacher, prune, data, sample)
    recalibrate_batch_norm(model, [x for x, _ in data])
    record = make_record(teacher, model, removed)
    if follow is not None and canonical_json(record) != canonical_json(follow):
        raise PlanMismatch(f"pruning {describe(teacher_arch)} did not rebuild its plan ({len(removed)} blocks "
                           f"removed, {len(record['tensors'])} tensors reshaped; the plan: {len(follow['removed'])}, "
                           f"{len(follow['tensors'])}): was the plan made from another teacher?")
    arch = PrunedArch(base=teacher_arch, prune=prune, keep=list(keep), record=record)
    head = model.get_submodule(head_name(model))
    num_classes = num_classes or getattr(head, "out_features", None) or head.out_channels
    in_channels = in_channels or data[0][0].shape[1]
    student = build_model(arch, num_classes, in_channels)
    student.load_state_dict(model.state_dict())
    return student.eval(), arch
