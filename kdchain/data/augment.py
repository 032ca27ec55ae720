"""Per-batch augmentation on tensors, on the device the batch is on: random crop with zero padding, flip.

Randomness comes from torch's global generator, which `fit` seeds, so a run repeats exactly.
"""

import torch
import torch.nn.functional as F

from kdchain.spec import Augment


def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """x (N, C, H, W) -> same shape: each image zero-padded by `padding` and cropped at its own random offset."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device)
    ox = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device)
    rows = (oy + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
    cols = (ox + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)


def random_flip(x: torch.Tensor) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def make_augment(spec: Augment):
    """A callable (N, C, H, W) -> (N, C, H, W) for the training batches, or None when nothing is on."""
    if not spec.crop_padding and not spec.flip:
        return None

    def augment(x: torch.Tensor) -> torch.Tensor:
        if spec.crop_padding:
            x = random_crop(x, spec.crop_padding)
        if spec.flip:
            x = random_flip(x)
        return x

    return augment
