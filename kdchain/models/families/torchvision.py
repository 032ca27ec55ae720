"""The `torchvision` family: any torchvision classification model by name.

`num_classes` replaces the model's last linear layer (VGG `classifier.6`, ResNet `fc`, MobileNet `classifier.3`,
EfficientNet `classifier.1`, ViT `heads.head`, ...), or SqueezeNet's final 1x1 conv. `weights` (a torchvision
weights name, read from TORCH_HOME's hub cache, never downloaded here, or a local checkpoint file) is loaded by
`load_weights` just before training, so that building, counting and inspecting work offline. `freeze` keeps the
parameters under the given module-name prefixes fixed.
"""

from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from torchvision import models as tvm

from kdchain.models.families.cnn import CnnArch
from kdchain.spec.base import SpecError
from kdchain.spec.kinds import FAMILIES
from kdchain.spec.models import Derive, Family, is_checkpoint_path


@FAMILIES.register
class TorchvisionArch(Family):
    """Any torchvision classification model by name; its last linear layer is replaced by one for num_classes."""

    kind: Literal["torchvision"] = "torchvision"
    name: str = Field(description="torchvision.models name, e.g. vgg19, resnet18, mobilenet_v3_small")
    weights: str | None = Field(None, description="torchvision weights (e.g. IMAGENET1K_V1, DEFAULT) or a local "
                                                  "checkpoint file (.pt/.pth); none = random initialisation")
    freeze: list[str] = Field(default_factory=list, description="module-name prefixes whose parameters stay fixed, "
                                                                "e.g. [features] to fine-tune only the classifier")

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str):
        from torchvision import models

        names = models.list_models(module=models)
        if name not in names:
            raise ValueError(f"unknown torchvision model {name!r}; choose one of: {', '.join(names)}")
        return name

    @model_validator(mode="after")
    def _known_weights(self):
        if self.weights is None or is_checkpoint_path(self.weights):
            return self
        from torchvision import models

        enum = models.get_model_weights(self.name)
        member = self.weights.split(".")[-1]
        if member not in enum.__members__:
            raise ValueError(f"{self.weights!r} is not a weights name of {self.name}; use one of "
                             f"{', '.join(enum.__members__)} or a checkpoint path ending in .pt/.pth")
        return self

    def build(self, num_classes: int, in_channels: int) -> nn.Module:
        if in_channels != 3:
            raise SpecError([f"model: torchvision's {self.name} takes 3-channel images but the data has {in_channels}; "
                             "use kind: cnn or resnet for this data set"])
        model = _with_head(_raw(self.name), num_classes)
        apply_freeze(model, self)
        return model

    def describe(self) -> str:
        return self.name + (" (pretrained)" if self.weights else "") + (
            f", frozen {','.join(self.freeze)}" if self.freeze else "")

    def default_tap(self) -> str:
        children = dict(_meta(self.name).named_children())
        return next((c for c in TAP_CANDIDATES if c in children), list(children)[-2])

    def derive(self, derive: Derive):
        return derive_torchvision(self, derive)

    def prepare(self, model: nn.Module) -> None:
        if self.weights is not None:
            model.load_state_dict(fitting_state(model, self), strict=False)

    def missing_weights(self) -> str | None:
        return missing_weights(self)

    def weights_problem(self, num_classes: int, in_channels: int) -> str | None:
        if self.weights is None or self.missing_weights():
            return None
        try:
            fitting_state(self.build(num_classes, 3), self)
        except SpecError as e:
            return e.lines[0]
        return None



# smallest first: `derive` maps a teacher to the member just before it
FAMILIES = [
    ["vgg11", "vgg13", "vgg16", "vgg19"],
    ["vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"],
    ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"],
    ["resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"],
    ["wide_resnet50_2", "wide_resnet101_2"],
    ["mobilenet_v3_small", "mobilenet_v2", "mobilenet_v3_large"],
    ["mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3"],
    ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"],
    ["squeezenet1_1", "squeezenet1_0"],
    [f"efficientnet_b{i}" for i in range(8)],
    ["efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l"],
    ["densenet121", "densenet169", "densenet201", "densenet161"],
    ["convnext_tiny", "convnext_small", "convnext_base", "convnext_large"],
    ["regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf", "regnet_y_8gf", "regnet_y_16gf",
     "regnet_y_32gf", "regnet_y_128gf"],
    ["regnet_x_400mf", "regnet_x_800mf", "regnet_x_1_6gf", "regnet_x_3_2gf", "regnet_x_8gf", "regnet_x_16gf",
     "regnet_x_32gf"],
    ["vit_b_32", "vit_b_16", "vit_l_32", "vit_l_16", "vit_h_14"],
    ["swin_t", "swin_s", "swin_b"],
    ["swin_v2_t", "swin_v2_s", "swin_v2_b"],
]
# the deepest feature map before pooling and head, first that the model has
TAP_CANDIDATES = ["features", "layer4", "trunk_output", "conv5", "layers", "Mixed_7c", "inception5b", "blocks",
                  "encoder"]
NO_AUX = {"googlenet", "inception_v3"}  # their auxiliary heads return tuples in training mode


def _raw(name: str) -> nn.Module:
    kwargs = {"aux_logits": False, "init_weights": True} if name in NO_AUX else {}
    return tvm.get_model(name, weights=None, **kwargs)


def head_name(model: nn.Module) -> str:
    """The layer `num_classes` replaces: the last nn.Linear, or the last conv for conv-headed models."""
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linear:
        return linear[-1]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return convs[-1]


def _replace(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _with_head(model: nn.Module, num_classes: int) -> nn.Module:
    name = head_name(model)
    old = model.get_submodule(name)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding)
    _replace(model, name, new)
    return model


def apply_freeze(model: nn.Module, arch: TorchvisionArch) -> None:
    names = [n for n, _ in model.named_modules() if n]
    for prefix in arch.freeze:
        hits = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            top = ", ".join(n for n, _ in model.named_children())
            raise SpecError([f"model.freeze: {prefix!r} matches no module of {arch.name}; "
                             f"use a module-name prefix such as one of: {top}"])
        frozen = model.get_submodule(prefix)
        for p in frozen.parameters():
            p.requires_grad_(False)
        for m in frozen.modules():  # a frozen BatchNorm must not keep learning its running statistics either
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.register_forward_pre_hook(_keep_eval)


def _keep_eval(module: nn.Module, args) -> None:
    """Forward pre-hook of a frozen BatchNorm: normalise with the stored statistics and never update them, also
    while the rest of the model trains (`model.train()` sets every module's flag; this undoes it for this one)."""
    module.training = False


@lru_cache(maxsize=32)
def _meta(name: str) -> nn.Module:
    """The architecture without allocating its weights: for names, shapes and layouts."""
    with torch.device("meta"):
        return _raw(name)


# ---------------------------------------------------------------------------------------------- weights


def weights_file(arch: TorchvisionArch) -> Path:
    """Where the weights are read from: the checkpoint path, or torchvision's file in TORCH_HOME's hub cache."""
    if is_checkpoint_path(arch.weights):
        return Path(arch.weights).expanduser()
    weights = tvm.get_model_weights(arch.name)[arch.weights.split(".")[-1]]
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def missing_weights(arch: TorchvisionArch) -> str | None:
    """One sentence saying how to provide the weights, or None when they are on disk (or not asked for)."""
    if arch.weights is None:
        return None
    path = weights_file(arch)
    if path.is_file():
        return None
    if is_checkpoint_path(arch.weights):
        return f"model.weights: checkpoint {path} does not exist; give the path of a state_dict saved with torch.save"
    weights = tvm.get_model_weights(arch.name)[arch.weights.split(".")[-1]]
    return (f"model.weights: {arch.name} {arch.weights} is not on this machine; copy {Path(weights.url).name} "
            f"(from {weights.url}) into {path.parent}/ (set TORCH_HOME to use another folder), "
            "or set weights to the path of a local checkpoint file")


def _state_dict_of(obj) -> dict:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # kdchain's and Lightning's checkpoints
        return obj["state_dict"]
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return obj["model"]
    return obj


def fitting_state(model: nn.Module, arch: TorchvisionArch) -> dict:
    """The checkpoint's tensors that `model` takes; SpecError when the file is missing or does not fit."""
    problem = missing_weights(arch)
    if problem:
        raise SpecError([problem])
    path = weights_file(arch)
    try:
        state = _state_dict_of(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:
        raise SpecError([f"model.weights: {path} is not a readable torch checkpoint ({type(e).__name__}); "
                         "save one with torch.save(model.state_dict(), path)"]) from None
    own = model.state_dict()
    head = head_name(model)
    skip = {k for k in own if k.startswith(head + ".") and k in state and state[k].shape != own[k].shape}
    bad = [k for k in own if k not in skip and (k not in state or state[k].shape != own[k].shape)]
    bad += [k for k in state if k not in own]
    if bad:
        first = ", ".join(f"{k} {tuple(state[k].shape) if k in state else 'missing'} vs "
                          f"{tuple(own[k].shape) if k in own else 'unexpected'}" for k in bad[:3])
        raise SpecError([f"model.weights: {path} does not fit {arch.name} ({len(bad)} tensors differ: {first}); "
                         f"give a checkpoint of {arch.name} or change model.name to the model it was saved from"])
    return {k: v for k, v in state.items() if k not in skip}


# ---------------------------------------------------------------------------------------------- derivation


def stage_layout(name: str, size: int = 224) -> list[tuple[int, int]]:
    """[(channels, convs)] per resolution of the model's convolutions, traced on the meta device.

    A stage is a run of convs at the same output resolution; its channels are those of its last conv (the
    stage's output), its convs those with a kernel larger than 1x1 (VGG19: (64, 2), (128, 2), (256, 4), ...).
    """
    model = _meta(name)
    seen: list[tuple[int, int, int]] = []  # (H_out, C_out, kernel) in execution order
    hooks = [m.register_forward_hook(lambda mod, i, o: seen.append((o.shape[-1], o.shape[1], mod.kernel_size[0])))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    stages: list[list] = []
    for h, c, k in seen:
        if h <= 1:
            continue  # squeeze-excitation convs on pooled maps
        if not stages or stages[-1][0] != h:
            stages.append([h, c, 0])
        stages[-1][1] = c
        stages[-1][2] += int(k > 1)
    return [(c, max(1, n)) for _, c, n in stages]


def derive_torchvision(arch: TorchvisionArch, derive: Derive):
    if derive.to == "cnn":
        layout = stage_layout(arch.name)
        return CnnArch(channels=[max(1, round(c * derive.width)) for c, _ in layout],
                       convs_per_stage=[max(1, round(n * derive.depth)) for _, n in layout],
                       pool_after=list(range(len(layout))))
    family = next((f for f in FAMILIES if arch.name in f), None)
    if family is None:
        raise SpecError([f"student.derive: {arch.name} has no smaller sibling registered; "
                         "use derive: {to: cnn, width: ...} or write the student out"])
    i = family.index(arch.name)
    if i == 0:
        raise SpecError([f"student.derive: {arch.name} is the smallest of {', '.join(family)}; "
                         "use derive: {to: cnn, width: ...} or write the student out"])
    return TorchvisionArch(name=family[i - 1])


def param_count(name: str, num_classes: int) -> int:
    return sum(p.numel() for p in _with_head(_raw(name), num_classes).parameters())
