"""Predictions and accuracy of a model over a split, in eval mode and large batches."""

import torch
from torch import nn

from kdchain.data import Split, batches
from kdchain.distill.device import in_format, memory_format


def eval_batch_size(input_shape) -> int:
    # 1024 at 32x32 and below; fewer for large images (VGG at 224x224 holds ~13 MB of activations per image)
    return max(16, min(1024, 1024 * 32 * 32 // (input_shape[-1] * input_shape[-2])))


@torch.inference_mode()
def predict(model: nn.Module, x, batch_size: int | None = None) -> torch.Tensor:
    """Logits (N, K) in eval mode, in large batches; `x` is a tensor (N, C, H, W) or a Split."""
    was_training = model.training
    model.eval()
    if isinstance(x, torch.Tensor):
        bs = batch_size or eval_batch_size(x.shape)
        fmt = memory_format(model)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            out = torch.cat([model(in_format(x[i:i + bs], fmt)).float() for i in range(0, len(x), bs)])
    else:
        out = predict_split(model, x, batch_size)[0]
    model.train(was_training)
    return out


@torch.inference_mode()
def predict_split(model: nn.Module, split, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, K), labels (N,)) over a split in its order; a streamed split may leave out unreadable files."""
    was_training = model.training
    model.eval()
    bs = batch_size or eval_batch_size(split.input_shape)
    logits, labels = [], []
    for xb, yb in batches(split, bs, shuffle=False):
        logits.append(model(xb))
        labels.append(yb)
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, split: Split, batch_size: int | None = None) -> float:
    """Top-1 accuracy in [0, 1]."""
    logits, y = predict_split(model, split, batch_size)
    return (logits.argmax(1) == y).float().mean().item()
