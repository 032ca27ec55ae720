"""The plain way, as the example does it: a torchvision-style Dataset + DataLoader, the teacher's forward on every
batch, no caching, no orchestration, no tracking. Same data split, architectures, epochs, seed, optimizer,
schedule, losses and thread count as the kdchain config, so that bench/vs_plain.py compares like with like.

    python bench/plain_chain.py [configs/digits-chain.yaml]   # prints one JSON line per generation
"""

import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from _common import DEFAULT_CONFIG
from kdchain.chain import resolve_chain
from kdchain.data import load_data
from kdchain.engine import free_cores
from kdchain.models import build_model
from kdchain.specs import load_spec


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


def accuracy(model, loader):
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    model.train()
    return correct / total


def main(config):
    spec = load_spec(config)
    torch.set_num_threads(spec.teacher.train.threads or free_cores())  # what kdchain picks, for a fair race
    data = load_data(spec.data, spec.seed)
    train_set = DigitsDataset(data.train.x, data.train.y)
    test_loader = DataLoader(DigitsDataset(data.test.x, data.test.y), batch_size=256)
    teacher = None
    for gen in resolve_chain(spec):
        t0 = time.perf_counter()
        torch.manual_seed(spec.seed + gen.index)
        model = build_model(gen.arch, data.num_classes, data.input_shape[0])
        tr = gen.train
        loader = DataLoader(train_set, batch_size=tr.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(spec.seed + gen.index))
        opt = torch.optim.AdamW(model.parameters(), lr=tr.lr, weight_decay=tr.weight_decay)
        steps = len(loader) * tr.epochs
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        for epoch in range(tr.epochs):
            for x, y in loader:
                logits = model(x)
                if teacher is None:
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
        teacher = model.eval()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_CONFIG)
