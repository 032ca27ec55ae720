"""The kdchain checkpoint as data (the architecture as JSON, input shape, classes, state_dict) and the model built
from it; and the pickle module MLflow saves a generation's logged model with, so that the logged model's
`data/model.pth` *is* that checkpoint: one copy of the weights in the store, read two ways.

- `mlflow.pytorch.load_model(...)` unpickles it (MLflow imports this module by the name it recorded) and gets the
  model back as its class: the pickle holds one call, `model_from_checkpoint(checkpoint)`.
- `read_checkpoint` reads it with `torch.load(weights_only=True)`, that call mapped to "return its argument":
  tensors, numbers and strings only, never pickled code, exactly like a workdir `model.pt`.
"""

import pickle
from pathlib import Path
from pickle import (DEFAULT_PROTOCOL, HIGHEST_PROTOCOL, PickleError, PicklingError, Unpickler,  # noqa: F401
                    UnpicklingError, dump, dumps, load, loads)

import torch
from pydantic import TypeAdapter
from torch import nn

from kdchain.models.build import build_model
from kdchain.spec import AnyArch, canonical_json

ARCH = TypeAdapter(AnyArch)  # a pruned model's checkpoint holds its base and its pruning record
CHECKPOINT_ATTR = "kdchain_checkpoint"  # set on a model while it is logged: the checkpoint it pickles as


def checkpoint_dict(model: nn.Module, arch, input_shape, num_classes: int, class_names=None) -> dict:
    """`class_names`: what each output means, in output order (plain strings: weights_only reads them)."""
    return {"arch": canonical_json(arch), "input_shape": list(input_shape), "num_classes": num_classes,
            "class_names": [str(c) for c in class_names] if class_names else None,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """The model a checkpoint describes, its weights loaded, in eval mode; `class_names` names its outputs."""
    model = build_model(ARCH.validate_json(ckpt["arch"]), ckpt["num_classes"], ckpt["input_shape"][0])
    model.load_state_dict(ckpt["state_dict"])
    model.class_names = ckpt.get("class_names")
    return model.eval()


def _the_checkpoint(ckpt: dict) -> dict:
    return ckpt


def read_checkpoint(path: Path, mmap: bool = False) -> dict:
    """A workdir `model.pt` or a logged model's `model.pth`, as the checkpoint dict; weights_only, so a file that
    holds anything but tensors and plain values (a foreign pickle) raises instead of running code."""
    with torch.serialization.safe_globals([(_the_checkpoint, f"{__name__}.model_from_checkpoint")]):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


class Pickler(pickle.Pickler):
    """torch.save(model, pickle_module=kdchain.models.saved): a model carrying CHECKPOINT_ATTR pickles as
    `model_from_checkpoint(<that checkpoint>)`, nothing of its class or modules; anything else as usual."""

    def reducer_override(self, obj):
        ckpt = obj.__dict__.get(CHECKPOINT_ATTR) if isinstance(obj, nn.Module) else None
        return NotImplemented if ckpt is None else (model_from_checkpoint, (ckpt,))
