"""The plain way, as the example does it: a torchvision-style Dataset + DataLoader, the teacher's forward on every
batch, no caching, no orchestration, no tracking. Same data split, architectures, epochs, seed, optimizer,
schedule, losses and thread count as the kdchain config, so that bench/vs_plain.py compares like with like.

Images stored as uint8 pixels (marks, CIFAR-10, image folders) are served the way torchvision's CIFAR10 serves
them: uint8 HWC arrays, `Image.fromarray` per item, then `transforms` (RandomCrop + RandomHorizontalFlip where
the data set augments, ToTensor, Normalize with the same mean and std). Digits, already float tensors, are
served as they are. The model runs in float32 with the default memory format, as the example's does.

    python bench/plain_chain.py [configs/digits-chain.yaml] [--set KEY=VALUE ...]   # one JSON line per generation
"""

import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from _common import DEFAULT_CONFIG
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from kdchain.data import load_data
from kdchain.distill import free_cores
from kdchain.models import build_model
from kdchain.models.prune import prune_model
from kdchain.resolve import resolve_chain
from kdchain.spec import PrunedArch, load_spec
from kdchain.students import training_sample


class DigitsDataset(Dataset):
    """(image (C, H, W), label) pairs, one at a time, as a torchvision data set serves them."""

    def __init__(self, x, y, transform=None):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        img = self.x[i]
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.y[i])


class ImageDataset(Dataset):
    """uint8 (N, C, H, W) pixels held as HWC arrays; each item a PIL image through `transform`, as in CIFAR10."""

    def __init__(self, x_u8, y, transform):
        self.data = x_u8.permute(0, 2, 3, 1).squeeze(-1).numpy()  # (N, H, W, C), or (N, H, W) for one channel
        self.targets = y.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def datasets(data, data_spec):
    """(train, test) Datasets serving the kdchain data bundle's splits the plain way."""
    if data.train.x.dtype != torch.uint8:  # digits: normalised float tensors already
        return DigitsDataset(data.train.x, data.train.y), DigitsDataset(data.test.x, data.test.y)
    norm = data.train.transform  # kdchain.data.sources.imagefolder.Normalise: the same mean and std
    tail = [transforms.ToTensor(), transforms.Normalize(norm.mean.flatten().tolist(), norm.std.flatten().tolist())]
    aug = getattr(data_spec, "augment", None)
    head = []
    if data.augment is not None and aug is not None:
        size = data.train.x.shape[-1]
        head = ([transforms.RandomCrop(size, padding=aug.crop_padding)] if aug.crop_padding else []) + \
               ([transforms.RandomHorizontalFlip()] if aug.flip else [])
    return (ImageDataset(data.train.x, data.train.y, transforms.Compose(head + tail)),
            ImageDataset(data.test.x, data.test.y, transforms.Compose(tail)))


def accuracy(model, loader):
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    model.train()
    return correct / total


def main(config, overrides=()):
    spec = load_spec(config, overrides)
    torch.set_num_threads(spec.teacher.train.threads or free_cores())  # what kdchain picks, for a fair race
    data = load_data(spec.data, spec.seed)
    train_set, test_set = datasets(data, spec.data)
    test_loader = DataLoader(test_set, batch_size=256)
    teacher = teacher_arch = None
    for gen in resolve_chain(spec):
        t0 = time.perf_counter()
        torch.manual_seed(spec.seed + gen.index)
        if isinstance(gen.arch, PrunedArch):  # the teacher pruned with torch-pruning, as kdchain does
            sample = training_sample(data, spec.seed + gen.index)
            model, arch = prune_model(teacher, teacher_arch, gen.arch.prune, sample, gen.arch.keep, data.num_classes,
                                      data.input_shape[0])
            model.train()
        else:
            model, arch = build_model(gen.arch, data.num_classes, data.input_shape[0]), gen.arch
        tr = gen.train
        loader = DataLoader(train_set, batch_size=tr.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(spec.seed + gen.index))
        opt = torch.optim.AdamW(model.parameters(), lr=tr.lr, weight_decay=tr.weight_decay)
        steps = len(loader) * tr.epochs
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        for epoch in range(tr.epochs):
            for x, y in loader:
                logits = model(x)
                if teacher is None or not any(term.kind == "kd" for term in gen.distill):
                    loss = F.cross_entropy(logits, y)
                else:
                    with torch.no_grad():
                        t_logits = teacher(x)  # the teacher, every batch
                    loss = 0
                    for term in gen.distill:
                        if term.kind == "kd":
                            T = term.temperature
                            loss = loss + term.weight * F.kl_div(F.log_softmax(logits / T, 1),
                                                                 F.softmax(t_logits / T, 1),
                                                                 reduction="batchmean") * T * T
                        elif term.kind == "ce":
                            loss = loss + term.weight * F.cross_entropy(logits, y)
                        else:
                            raise SystemExit(f"plain_chain.py does only kd and ce, not {term.kind}")
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            print(f"{gen.name} epoch {epoch + 1}/{tr.epochs} loss {loss.item():.4f}", file=sys.stderr)
        acc = accuracy(model, test_loader)
        print(json.dumps({"name": gen.name, "seconds": time.perf_counter() - t0, "test_accuracy": acc}), flush=True)
        teacher, teacher_arch = model.eval(), arch


if __name__ == "__main__":
    args = sys.argv[1:]
    config = args.pop(0) if args and args[0] != "--set" else DEFAULT_CONFIG
    main(config, [a for i, a in enumerate(args) if i % 2 == 1])  # --set K=V --set K=V ...
