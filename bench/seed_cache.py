"""Student A of the seed example (configs/seed-vgg19-cifar10.yaml) for one epoch: the teacher live against its
outputs cached on disk (float16, memory-mapped), on the seed's shapes: a stand-in VGG19 (random weights, 10-class
head) at 224x224, A's 0.5 feature-MSE on 512x7x7 + 0.5 CE, `n` stand-in CIFAR-size images resized per batch.

    python bench/seed_cache.py [--images 128] [--threads 2]

The cache budget is set below the outputs' size so that `cache: auto` spills to disk as it does for 45,000 images
(4.3 GB > 512 MB). Prints seconds per epoch and per image, and the 50,000-image epoch they extrapolate to.
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import ROOT
from torchvision.models import vgg19

from kdchain.data.images import make_normalise
from kdchain.data.splits import DataBundle, Split
from kdchain.distill import fit
from kdchain.models import build_model
from kdchain.resolve import resolve_chain
from kdchain.spec import load_spec
from kdchain.students import build_loss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    spec = load_spec(ROOT / "configs" / "seed-vgg19-cifar10.yaml")
    gen = resolve_chain(spec)[1]
    torch.manual_seed(0)
    x = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8)  # CIFAR-size, resized per batch
    y = torch.randint(0, 10, (args.images,))
    norm = make_normalise("imagenet", x, 224)
    data = DataBundle(Split(x, y, norm), Split(x[:16], y[:16], norm), Split(x[:16], y[:16], norm), num_classes=10,
                      class_names=[str(i) for i in range(10)])
    teacher = vgg19(num_classes=10).eval()
    rows = {}
    for mode, epochs in (("off", 1), ("auto", 2)):
        torch.manual_seed(1)
        student = build_model(gen.arch, 10, 3)
        loss = build_loss(gen, student, teacher, data.input_shape)
        train = gen.train.model_copy(update={"epochs": epochs, "cache": mode, "cache_memory_mb": 1.0,
                                             "threads": args.threads})
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            result = fit(student, teacher, loss, data, train, state_path=Path(tmp) / "train_state.pt")
            rows[mode] = (result, time.perf_counter() - t0)
    live, cached = rows["off"][0], rows["auto"][0]
    live_epoch = live.history[0].seconds
    cached_epoch = sum(r.seconds for r in cached.history) / len(cached.history)
    n = args.images
    print(f"A on {n} images at 224x224, {args.threads} threads; cached: {cached.teacher}")
    print(f"live teacher:   {live_epoch:7.1f} s an epoch  ({1000 * live_epoch / n:6.1f} ms an image)")
    print(f"cached on disk: {cached_epoch:7.1f} s an epoch  ({1000 * cached_epoch / n:6.1f} ms an image), after "
          f"{cached.cache_seconds:.1f} s filling the cache once ({1000 * cached.cache_seconds / n:.1f} ms an image)")
    print(f"speed-up per epoch: {live_epoch / cached_epoch:.1f}x; 5 epochs on 50,000 images: live "
          f"{5 * 50_000 * live_epoch / n / 3600:.1f} h, cached {50_000 * (5 * cached_epoch + cached.cache_seconds) / n / 3600:.1f} h")


if __name__ == "__main__":
    main()
