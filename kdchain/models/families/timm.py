"""The `timm` family: any `timm.create_model` name, its classifier reset for `num_classes`.

`weights` is loaded by `load_weights` just before training (building, counting and checking stay offline and
cheap): a local .safetensors/.pth file, or `pretrained` for timm's own cache (the Hugging Face hub cache, where
timm downloads to; nothing is downloaded here). timm's `load_pretrained` does the fitting: the ImageNet head is
dropped for another class count and the first conv is adapted to the data's channels. `model_args` go to the
model's constructor, which is how `derive` scales a timm ResNet (channels, layers) or ConvNeXt (dims, depths).
timm itself is imported when a timm model is first built: a chain without one never pays for importing it.
"""

from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from kdchain.models.families.cnn import CnnArch
from kdchain.models.families.torchvision import apply_freeze
from kdchain.spec.base import SpecError
from kdchain.spec.kinds import FAMILIES
from kdchain.spec.models import Derive, Family


@FAMILIES.register
class TimmArch(Family):
    """Any timm model by name (`timm.create_model`), its classifier reset for num_classes."""

    kind: Literal["timm"] = "timm"
    name: str = Field(description="timm model name, e.g. resnet18, convnext_atto, efficientnet_b0 (timm.list_models())")
    weights: str | None = Field(None, description="pretrained weights: a local .safetensors/.pth file, or "
                                                  "`pretrained` for timm's own download cache (Hugging Face hub "
                                                  "cache); none = random")
    freeze: list[str] = Field(default_factory=list, description="module-name prefixes whose parameters stay fixed")
    model_args: dict[str, int | float | bool | str | list[int] | list[float]] = Field(
        default_factory=dict, description="keyword arguments of the model's constructor, e.g. "
                                          "{channels: [32, 64, 128, 256]} for a timm ResNet, {dims: ..., depths: ...}")

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str):
        import difflib

        import timm

        if not timm.is_model(name):
            near = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
            raise ValueError(f"unknown timm model {name!r}; " + (f"did you mean {', '.join(near)}?" if near else
                             "timm.list_models() lists them"))
        return name

    def build(self, num_classes: int, in_channels: int) -> nn.Module:
        model = _create(self, num_classes, in_channels)
        apply_freeze(model, self)
        return model

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.model_args.items())
        return f"timm {self.name}" + (f"({args})" if args else "") + (" (pretrained)" if self.weights else "") + (
            f", frozen {','.join(self.freeze)}" if self.freeze else "")

    def default_tap(self) -> str:
        """The deepest feature map before pooling and head: timm's last feature_info stage (layer4, stages.3...)."""
        return meta_model(self).feature_info[-1]["module"]

    def derive(self, derive: Derive):
        return derive_timm(self, derive)

    def prepare(self, model: nn.Module) -> None:
        load_weights(model, self)

    def missing_weights(self) -> str | None:
        return missing_weights(self)

    def weights_problem(self, num_classes: int, in_channels: int) -> str | None:
        if self.weights is None or self.missing_weights():
            return None
        try:  # timm's own loader fits the head and the first conv
            load_weights(self.build(num_classes, in_channels), self)
        except SpecError as e:
            return e.lines[0]
        return None



CACHE = "pretrained"  # weights: pretrained = timm's own download cache
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")  # what timm looks for


def _create(arch: TimmArch, num_classes: int, in_channels: int) -> nn.Module:
    import timm

    try:
        return timm.create_model(arch.name, pretrained=False, num_classes=num_classes, in_chans=in_channels,
                                 **arch.model_args)
    except TypeError as e:  # a model_args key the constructor does not take
        raise SpecError([f"model.model_args: timm's {arch.name} does not take these arguments ({e})"]) from None


@lru_cache(maxsize=32)
def _meta(name: str, args_json: str) -> nn.Module:
    """The architecture without allocating its weights: for names, stage layouts and feature_info."""
    import json

    with torch.device("meta"):
        return _create(TimmArch(name=name, model_args=json.loads(args_json)), 10, 3)


def meta_model(arch: TimmArch) -> nn.Module:
    import json

    return _meta(arch.name, json.dumps(arch.model_args, sort_keys=True))


# ---------------------------------------------------------------------------------------------- weights


def weights_file(arch: TimmArch) -> Path | None:
    """Where the weights are read from: the local file, or timm's file in the Hugging Face cache (None: not there)."""
    if arch.weights != CACHE:
        return Path(arch.weights).expanduser()
    from huggingface_hub import try_to_load_from_cache

    hub_id = meta_model(arch).pretrained_cfg.get("hf_hub_id")
    for filename in WEIGHT_FILES if hub_id else ():
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def missing_weights(arch: TimmArch) -> str | None:
    """One sentence saying what to put where, or None when the weights are on disk (or not asked for)."""
    if arch.weights is None:
        return None
    path = weights_file(arch)
    if path is not None and path.is_file():
        return None
    if arch.weights != CACHE:
        return (f"model.weights: {path} does not exist; put a {arch.name} state_dict there (.safetensors or .pth, "
                f"e.g. safetensors.torch.save_file(model.state_dict(), path)), or use weights: {CACHE} with "
                "timm's cache")
    from huggingface_hub.constants import HF_HUB_CACHE

    hub_id = meta_model(arch).pretrained_cfg.get("hf_hub_id") or arch.name
    return (f"model.weights: timm's {arch.name} weights ({hub_id}) are not in timm's cache {HF_HUB_CACHE}; "
            f"copy that cache from a machine where timm.create_model({arch.name!r}, pretrained=True) ran (set "
            "HF_HOME to use another folder), or set weights to a local .safetensors/.pth file")


def load_weights(model: nn.Module, arch: TimmArch) -> None:
    """Load `arch.weights` through timm's load_pretrained: another class count drops the pretrained head, another
    channel count adapts the first conv. A file that does not fit is a SpecError naming it."""
    if arch.weights is None:
        return
    problem = missing_weights(arch)
    if problem:
        raise SpecError([problem])
    import timm

    path = weights_file(arch)
    cfg = {**model.pretrained_cfg, "file": str(path)}
    first_conv = model.get_submodule(cfg["first_conv"]) if cfg.get("first_conv") else None
    in_chans = first_conv.in_channels if isinstance(first_conv, nn.Conv2d) else 3
    try:
        timm.models.load_pretrained(model, pretrained_cfg=cfg, num_classes=model.num_classes, in_chans=in_chans)
    except Exception as e:  # torch's "Error(s) in loading state_dict" line, then the tensors that differ
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        first = (lines[1] if len(lines) > 1 and lines[0].startswith("Error(s)") else lines[0])[:200]
        raise SpecError([f"model.weights: {path} does not fit timm's {arch.name} ({first}); give a state_dict "
                         f"of {arch.name} with the same model_args"]) from None


# ---------------------------------------------------------------------------------------------- derivation


def _constructor_args(model: nn.Module) -> dict[str, list[int]] | None:
    """The width and depth arguments that rebuild `model`'s stages, for the families whose constructors take them."""
    name = type(model).__name__
    if name == "ResNet":  # channels are the blocks' planes (Bottleneck outputs 4x its planes)
        layers = [model.get_submodule(f"layer{i}") for i in range(1, 5)]
        return {"channels": [layer[0].conv1.out_channels if hasattr(layer[0], "conv3") else
                             layer[-1].conv2.out_channels for layer in layers],
                "layers": [len(layer) for layer in layers]}
    if name == "ConvNeXt":
        return {"dims": [f["num_chs"] for f in model.feature_info], "depths": [len(s.blocks) for s in model.stages]}
    return None


WIDTH_ARGS, DEPTH_ARGS = ("channels", "dims"), ("layers", "depths")


def derive_timm(arch: TimmArch, derive: Derive):
    """to: same -> the same timm model with its width/depth arguments scaled; to: cnn -> a cnn with its stages."""
    model = meta_model(arch)
    if derive.to == "cnn":
        stages = [f for f in model.feature_info if f["reduction"] >= 4]
        convs = [sum(1 for m in model.get_submodule(f["module"]).modules()
                     if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1) for f in stages]
        return CnnArch(channels=[max(1, round(f["num_chs"] * derive.width)) for f in stages],
                       convs_per_stage=[max(1, round(n * derive.depth)) for n in convs],
                       pool_after=list(range(len(stages))))
    args = _constructor_args(model)
    if args is None:
        raise SpecError([f"student.derive: timm's {arch.name} ({type(model).__name__}) has no width/depth arguments "
                         "kdchain knows (ResNet, ConvNeXt); use derive: {to: cnn, width: ...} or write the student "
                         "out with model_args"])
    scaled = {k: [max(1, round(v * (derive.width if k in WIDTH_ARGS else derive.depth))) for v in vals]
              for k, vals in args.items()}
    if "dims" in scaled:  # ConvNeXt's LayerNorm and depthwise convs need no divisibility; keep even widths anyway
        scaled["dims"] = [max(2, 2 * round(d / 2)) for d in scaled["dims"]]
    return arch.model_copy(update={"model_args": {**arch.model_args, **scaled}, "weights": None, "freeze": []})
