"""Images/s of teacher training and of distillation with the data resident on the device, bf16 autocast and
channels_last (both on by default on CUDA in kdchain.distill.engine), cached and live teacher.

    python bench/gpu.py [--device cuda] [--data marks] [--size 32] [--epochs 5] [--compile]

Uses the `marks` data set when this checkout has it, else digits upscaled to --size (printed either way).
On CPU (`--device cpu --epochs 1`) it runs the same code path, slowly.

With several visible GPUs it then trains the teacher with 1 and with all of them (train.distributed, NCCL, one
rank per GPU, bf16 and channels_last as in one process) through train_generation, as `kdchain run` does, and
prints the images/s of each and their ratio (bench/ddp.py's measurement). `--ddp-only` skips the first part.
"""

import argparse

import torch
from _common import DEFAULT_CONFIG

from kdchain.data import load_data
from kdchain.distill import fit, use_bf16
from kdchain.models import build_model
from kdchain.resolve import resolve_chain
from kdchain.spec import SOURCES, load_spec
from kdchain.students import build_loss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data", default="marks")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--ddp-only", action="store_true", help="only the 1 vs all GPUs comparison")
    args = ap.parse_args()
    kind = args.data if args.data in SOURCES else "digits"
    overrides = [f"data.kind={kind}", f"data.image_size={args.size}", f"device={args.device}"]
    spec = load_spec(args.config, overrides)
    gens = resolve_chain(spec)
    data = load_data(spec.data, spec.seed)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {name}; data {kind} {tuple(data.input_shape)}, {len(data.train)} training images; "
          f"bf16 autocast {'on' if use_bf16(device) else 'off (no native bf16)'}, channels_last, compile {args.compile}")

    def images_per_s(index: int, teacher, cache: str) -> tuple[float, torch.nn.Module, str]:
        gen = gens[index]
        train = gen.train.model_copy(update={"epochs": args.epochs, "batch_size": args.batch_size, "cache": cache,
                                             "compile": args.compile})
        torch.manual_seed(0)
        model = build_model(gen.arch, data.num_classes, data.input_shape[0])
        loss = build_loss(gen, model, teacher, data.input_shape)
        r = fit(model, teacher, loss, data, train, device=device)
        steady = r.history[1:] or r.history  # the first epoch pays compilation and allocator warm-up
        seconds = sum(h.seconds for h in steady)
        return len(data.train) * len(steady) / seconds, model.eval(), r.teacher

    if not args.ddp_only:
        ips, teacher, _ = images_per_s(0, None, "off")
        print(f"teacher training ({gens[0].name}): {ips:,.0f} images/s")
        for cache in ("on", "off"):
            ips, _, how = images_per_s(1, teacher, cache)
            print(f"distillation {gens[0].name} -> {gens[1].name}, teacher {how.split(':')[0]}: {ips:,.0f} images/s")
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus > 1:
        compare_gpus(args, overrides, gpus)


def compare_gpus(args, overrides: list[str], gpus: int) -> None:
    """The teacher trained on 1 GPU and data-parallel on all `gpus` (NCCL), by train_generation."""
    from ddp import compare  # bench/ddp.py

    compare(args.config, args.size, max(2, args.epochs), gpus, lambda n: 1,
            lambda n: f"teacher on {n} GPU{'s' if n > 1 else ''} (nccl, bf16)",
            overrides + [f"teacher.train.batch_size={args.batch_size}"])

if __name__ == "__main__":
    main()
