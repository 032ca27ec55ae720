"""Per-batch augmentation on tensors, on the device the batch is on: random crop with zero padding, flip.

Randomness comes from torch's global generator, which `fit` seeds, so a run repeats exactly. The draw (each
image's crop offset and flip) is separate from its application, so that a seeded view can be drawn again and
replayed: the FKD recipe (kdchain.distill.teacher_views) stores the teacher's outputs for K such views.
"""

import torch
import torch.nn.functional as F

from kdchain.spec.data import Augment


def draw_crop(n: int, padding: int, generator: torch.Generator | None, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop offsets (oy, ox), each (N, 1) in [0, 2 * padding]."""
    oy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=device)
    ox = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=device)
    return oy, ox


def draw_flip(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """(N,) bool: which images are mirrored, one in two."""
    return torch.rand(n, generator=generator, device=device) < 0.5


def random_crop(x: torch.Tensor, padding: int, oy: torch.Tensor | None = None,
                ox: torch.Tensor | None = None) -> torch.Tensor:
    """x (N, C, H, W) -> same shape: each image zero-padded by `padding` and cropped at its own offset (oy, ox:
    (N, 1) in [0, 2 * padding]; random when not given)."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    if oy is None:
        oy, ox = draw_crop(n, padding, None, x.device)
    rows = (oy + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
    cols = (ox + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)


def random_flip(x: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
    """x (N, C, H, W) mirrored left-right where `flip` (N,) is true (random, one in two, when not given)."""
    if flip is None:
        flip = draw_flip(x.shape[0], None, x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


class Augmentation:
    """Callable (N, C, H, W) -> (N, C, H, W) for the training batches; `draw` and `apply` split it in two."""

    def __init__(self, spec: Augment):
        self.spec = spec

    def draw(self, n: int, generator: torch.Generator | None = None, device="cpu") -> dict[str, torch.Tensor]:
        """The random choices for n images: {"oy", "ox": (N, 1) crop offsets, "flip": (N,) bool}; from the global
        generator on `device`, or from `generator` (CPU) and then moved there."""
        on = "cpu" if generator is not None else device
        out = {}
        if self.spec.crop_padding:
            out["oy"], out["ox"] = draw_crop(n, self.spec.crop_padding, generator, on)
        if self.spec.flip:
            out["flip"] = draw_flip(n, generator, on)
        return {k: v.to(device) for k, v in out.items()}

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.spec.crop_padding:
            x = random_crop(x, self.spec.crop_padding, params["oy"], params["ox"])
        if self.spec.flip:
            x = random_flip(x, params["flip"])
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.draw(len(x), device=x.device))


def make_augment(spec: Augment) -> Augmentation | None:
    """The training batches' augmentation, or None when nothing is on."""
    if not spec.crop_padding and not spec.flip:
        return None
    return Augmentation(spec)
