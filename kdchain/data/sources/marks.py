"""`marks`: a procedural stand-in for the product-inspection example (10 kinds of printed marks).

Each class is a fixed combination of dots, rings, bars and outlines, drawn as signed distance fields in the
mark's own coordinates; every image places it at a random position, rotation and scale on a textured surface
with uneven lighting, blur, low contrast and clutter (scratches, specks). Every class is mirror-symmetric, so a
horizontal flip keeps the label. `difficulty` in [0, 1] widens every random range. The whole batch is rendered
at once with tensor ops on the grid (N, H, W); the same seed gives the same images.
"""

import math
from typing import Literal

import torch
from pydantic import Field

from kdchain.data.images import make_normalise
from kdchain.data.splits import DataBundle, Split
from kdchain.spec.base import Strict
from kdchain.spec.data import Augment, Source
from kdchain.spec.kinds import SOURCES

CLASS_NAMES = ["dot", "two-dots", "three-dots", "ring", "ring-dot", "cross", "bar", "two-bars", "square", "four-dots"]



class MarksUnlabeled(Strict):
    """Extra training images whose labels are dropped: what production sends without anyone labelling it."""

    count: int = Field(ge=1, description="unlabeled training images, beside the labeled train_size")
    difficulty: float | None = Field(None, ge=0.0, le=1.0, description="their difficulty; default the data's")


@SOURCES.register
class MarksData(Source):
    """Procedural product-inspection marks: 10 classes of dot/shape combinations on textured surfaces."""

    kind: Literal["marks"] = "marks"
    train_size: int = Field(20000, ge=10, description="training images")
    val_size: int = Field(2000, ge=10, description="validation images")
    test_size: int = Field(4000, ge=10, description="test images")
    image_size: int = Field(32, ge=16, le=256, description="height and width in pixels")
    difficulty: float = Field(0.95, ge=0.0, le=1.0, description="0 = clean, centred marks; 1 = heavy blur, clutter, "
                                                               "uneven lighting, small low-contrast marks")
    augment: Augment = Field(default_factory=lambda: Augment(crop_padding=2, flip=True),
                             description="per-batch augmentation (every class is mirror-symmetric)")
    unlabeled: MarksUnlabeled | None = Field(None, description="extra training images without labels: students "
                                             "distil on them (their teacher's outputs the only target), label terms "
                                             "and the teacher never see them")

    def load(self, seed: int) -> DataBundle:
        return load_marks(self, seed)

    def shape(self) -> tuple[tuple[int, int, int], int]:
        return (3, self.image_size, self.image_size), len(SHAPES)

    def train_images(self) -> int:
        return self.train_size + (self.unlabeled.count if self.unlabeled else 0)



def _disc(u, v, x0, y0, r):
    return torch.hypot(u - x0, v - y0).sub_(r)


def _ring(u, v, r, t):
    return torch.hypot(u, v).sub_(r).abs_().sub_(t)


def _bar(u, v, half_len, half_thick, y0=0.0):
    return torch.maximum((u).abs() - half_len, (v - y0).abs() - half_thick)


def _square(u, v, half, t):
    return (torch.maximum(u.abs(), v.abs()) - half).abs() - t


def _union(*sdfs):
    out = sdfs[0]
    for s in sdfs[1:]:
        out = torch.minimum(out, s)
    return out


# class -> signed distance (negative inside the ink) of (u, v) in mark units; the mark spans about [-0.45, 0.45]
SHAPES = [
    lambda u, v: _disc(u, v, 0.0, 0.0, 0.2),
    lambda u, v: _union(_disc(u, v, -0.26, 0.0, 0.14), _disc(u, v, 0.26, 0.0, 0.14)),
    lambda u, v: _union(*[_disc(u, v, 0.28 * math.cos(a), 0.28 * math.sin(a), 0.12)
                          for a in (math.pi / 2, math.pi / 2 + 2.094, math.pi / 2 + 4.189)]),
    lambda u, v: _ring(u, v, 0.3, 0.06),
    lambda u, v: _union(_ring(u, v, 0.32, 0.05), _disc(u, v, 0.0, 0.0, 0.1)),
    lambda u, v: _union(_bar(u, v, 0.4, 0.07), _bar(v, u, 0.4, 0.07)),
    lambda u, v: _bar(u, v, 0.42, 0.08),
    lambda u, v: _union(_bar(u, v, 0.38, 0.06, 0.16), _bar(u, v, 0.38, 0.06, -0.16)),
    lambda u, v: _square(u, v, 0.28, 0.055),
    lambda u, v: _union(*[_disc(u, v, sx * 0.22, sy * 0.22, 0.1) for sx in (-1, 1) for sy in (-1, 1)]),
]


def _u(g, n, lo, hi):
    return torch.rand(n, 1, 1, generator=g) * (hi - lo) + lo


def render(labels: torch.Tensor, size: int, difficulty: float, g: torch.Generator) -> torch.Tensor:
    """labels (N,) -> images (N, 3, size, size) float in [0, 1]."""
    n, d = len(labels), difficulty
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    yy, xx = axis.view(1, size, 1), axis.view(1, 1, size)
    px = 2.0 / size  # one pixel in image units

    # placement: centre, rotation, scale (mark units -> image units)
    cx, cy = _u(g, n, -0.1 - 0.35 * d, 0.1 + 0.35 * d), _u(g, n, -0.1 - 0.35 * d, 0.1 + 0.35 * d)
    theta = _u(g, n, 0, 2 * math.pi)
    scale = _u(g, n, 1.5 - 0.6 * d, 1.9 - 0.5 * d)
    cos, sin = torch.cos(theta), torch.sin(theta)
    dx, dy = (xx - cx) / scale, (yy - cy) / scale  # (N, H, W)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy

    sdf = torch.empty(n, size, size)
    for k, shape in enumerate(SHAPES):
        idx = (labels == k).nonzero().squeeze(1)
        if len(idx):
            sdf[idx] = shape(u[idx], v[idx])
    blur = _u(g, n, 0.5, 0.8 + 2.5 * d) * px / scale  # edge softness in mark units: 0.5 px sharp .. ~3 px blurred
    ink = torch.sigmoid(sdf.div_(blur).neg_())  # (N, H, W) coverage in [0, 1]

    # surface luminance: low-frequency mottling and fine grain around 1; the tint comes last, per channel
    # mottling = a product of two random low-frequency waves (separable: an outer product of (H, 1) and (1, W))
    wave_y = torch.cos(yy * _u(g, n, 1, 4) + _u(g, n, 0, 2 * math.pi))
    wave_x = torch.cos(xx * _u(g, n, 1, 4) + _u(g, n, 0, 2 * math.pi))
    surface = (wave_y * wave_x).mul_((0.06 + 0.15 * d) * _u(g, n, 0.3, 1)).add_(1)  # (N, H, W)
    surface.add_(torch.rand(n, size, size, generator=g).sub_(0.5), alpha=0.06 + 0.18 * d)  # grain

    # clutter: up to 2 faint scratches (lines across the image) and 2 specks, on the images that get them
    shade = torch.zeros(n, size, size)
    for count, p_on in ((2, 0.2 + 0.6 * d), (2, 0.6 * d)):
        for _ in range(count):
            idx = (torch.rand(n, generator=g) < p_on).nonzero().squeeze(1)
            m = len(idx)
            if not m:
                continue
            if p_on == 0.6 * d:  # a speck
                sx, sy = _u(g, m, -0.9, 0.9), _u(g, m, -0.9, 0.9)
                dist = torch.hypot(xx - sx, yy - sy).sub_(px * _u(g, m, 0.5, 1.2))
            else:  # a scratch
                a, off = _u(g, m, 0, math.pi), _u(g, m, -0.8, 0.8)
                dist = (torch.cos(a) * xx + torch.sin(a) * yy - off).abs_().sub_(px * 0.4)
            mark = torch.sigmoid(dist.mul_(-1 / (0.6 * px))).mul_(_u(g, m, 0.1, 0.2 + 0.25 * d))
            shade[idx] = torch.maximum(shade[idx], mark)

    # lighting: a linear gradient in a random direction
    light_dir = _u(g, n, 0, 2 * math.pi)
    light = (torch.cos(light_dir) * xx + torch.sin(light_dir) * yy).mul_((0.15 + 0.45 * d) * _u(g, n, -1, 1)).add_(1)
    keep = shade.neg_().add_(1).mul_(light)  # (N, H, W): what clutter and lighting leave of each pixel

    cover = ink.mul_(_u(g, n, 1.0 - 0.55 * d, 1.0))  # ink coverage times contrast
    base = torch.rand(n, 3, 1, 1, generator=g) * 0.35 + 0.45
    ink_colour = torch.rand(n, 3, 1, 1, generator=g) * 0.25
    # pixel = (base * surface * (1 - cover) + ink * cover) * keep, per channel
    paper = surface.mul_(1 - cover).mul_(keep).unsqueeze(1)
    img = base * paper
    img.addcmul_(ink_colour, cover.mul_(keep).unsqueeze(1))
    return img.clamp_(0, 1)


def generate(count: int, size: int, difficulty: float, seed: int, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (count, 3, size, size), labels (count,)), balanced classes in a seeded order."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % len(SHAPES)
    labels = labels[torch.randperm(count, generator=g)]
    images = torch.empty(count, 3, size, size, dtype=torch.uint8)
    for start in range(0, count, chunk):
        batch = render(labels[start:start + chunk], size, difficulty, g)
        images[start:start + chunk] = batch.mul_(255).round_().to(torch.uint8)
    return images, labels


def load_marks(spec: MarksData, seed: int) -> DataBundle:
    # three independent streams from the seed: growing one split never changes another
    xtr, ytr = generate(spec.train_size, spec.image_size, spec.difficulty, seed * 3 + 1)
    xva, yva = generate(spec.val_size, spec.image_size, spec.difficulty, seed * 3 + 2)
    xte, yte = generate(spec.test_size, spec.image_size, spec.difficulty, seed * 3 + 3)
    norm = make_normalise("dataset", xtr, spec.image_size)
    if spec.unlabeled is not None:  # a fourth stream; label -1: kdchain.distill.losses leaves them to teacher terms
        difficulty = spec.difficulty if spec.unlabeled.difficulty is None else spec.unlabeled.difficulty
        xun, _ = generate(spec.unlabeled.count, spec.image_size, difficulty, seed * 3 + 4 + 10**6)
        xtr, ytr = torch.cat([xtr, xun]), torch.cat([ytr, torch.full((len(xun),), -1, dtype=ytr.dtype)])
    return DataBundle(Split(xtr, ytr, norm), Split(xva, yva, norm), Split(xte, yte, norm),
                      num_classes=len(SHAPES), class_names=CLASS_NAMES)
