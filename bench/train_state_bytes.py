"""Bytes of the seed teacher's resume state (train_state.pt), as kdchain writes it now and as it was written before
(the whole state_dict, frozen features included), with Adam's moments after one step.

    python bench/train_state_bytes.py

VGG19 with a 10-class head and frozen `features`, as configs/seed-vgg19-cifar10.yaml trains it (random weights: only
the sizes matter); one Adam step on 2 images at 32x32 creates the moments.
"""

import os
import tempfile

import torch
import torchvision
from _common import ROOT  # noqa: F401 - puts this checkout first on sys.path

from kdchain.distill.state import trained_state


def main() -> None:
    model = torchvision.models.vgg19(num_classes=10)
    for p in model.features.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    with tempfile.TemporaryDirectory() as tmp:
        for label, student in (("before (state_dict)", model.state_dict()), ("now (trained_state)", trained_state(model))):
            path = os.path.join(tmp, "train_state.pt")
            torch.save({"student": student, "optimizer": opt.state_dict()}, path)
            print(f"{label:<22} {os.path.getsize(path):>15,d} B")


if __name__ == "__main__":
    main()
