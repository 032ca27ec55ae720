"""What image sources share: uint8 pixels resized and normalised per batch on the device."""

import torch
import torch.nn.functional as F

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Normalise:
    """uint8 (N, C, h, w) on any device -> float (N, C, size, size): bilinear resize, then (x/255 - mean) / std."""

    def __init__(self, mean, std, size: int):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


def make_normalise(kind: str, train_u8: torch.Tensor, size: int) -> Normalise:
    if kind == "imagenet":
        return Normalise(IMAGENET_MEAN, IMAGENET_STD, size)
    sample = train_u8[:5000].float() / 255  # per-channel statistics of (up to 5,000) training images
    return Normalise(sample.mean(dim=(0, 2, 3)).tolist(), sample.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist(), size)


# ---------------------------------------------------------------------------------------------- cifar10
