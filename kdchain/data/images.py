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


ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")


def to_rgb(im):
    """A PIL image of any mode -> 8-bit RGB with the pixel values the file means:
    - 16-bit and 32-bit grey ("I;16*", "I"): scaled from 0..65535 to 0..255, not clipped (PIL's convert("RGB")
      turns every value above 255 white); an "I" image whose values all fit 0..255 is taken as 8-bit;
    - float grey ("F"): 0..1 when every value is, else 0..255;
    - transparency (alpha channel, or a palette/grey/RGB image with a transparent colour): composited over black;
    - palette, bilevel, grey, CMYK, YCbCr, LAB, HSV: PIL's own conversion;
    - EXIF orientation applied, as a viewer shows the photo."""
    import numpy as np
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        values = np.asarray(im, dtype=np.float64)
        top = values.max(initial=0.0)
        full = (1.0 if top <= 1.0 else 255.0) if im.mode == "F" else (
            65535.0 if im.mode.startswith("I;16") or top > 255 else 255.0)
        grey = np.clip(values * (255.0 / full) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if im.mode in ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return im.convert("RGB")


def make_normalise(kind: str, train_u8: torch.Tensor, size: int) -> Normalise:
    if kind == "imagenet":
        return Normalise(IMAGENET_MEAN, IMAGENET_STD, size)
    sample = train_u8[:5000].float() / 255  # per-channel statistics of (up to 5,000) training images
    return Normalise(sample.mean(dim=(0, 2, 3)).tolist(), sample.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist(), size)


# ---------------------------------------------------------------------------------------------- cifar10
