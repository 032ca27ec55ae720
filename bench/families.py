"""Today's architectures in a chain: a small ViT family and a ConvNeXt-atto family on marks 32x32, each trained as
teacher -> A -> B -> C with pruned students (the chain), against two fresh students of C's exact architecture:
one distilled directly from the teacher (kd 0.7 at T 4 + ce 0.3, as the chain) and one trained on labels alone.

A fresh student of C's architecture is the teacher's family newly initialised and pruned link by link as C was
(prune_model following each link's record: the same blocks removed, the same shapes), so its shapes are C's and
none of its weights were trained. Every arm trains the same epochs with the
same schedule. Library calls (kdchain.chain.train_generation for the chain, kdchain.distill.fit for the fresh
arms), no Prefect or MLflow; seeds in turn.

    python bench/families.py [--families vit convnext] [--seeds 0 1 2] [--train-size 5000] [--epochs 8]
                             [--cpu "..."] [--out docs/results.md]
"""

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import _common  # this checkout's packages first
import torch

from kdchain.chain import train_generation
from kdchain.checkpoints import load_checkpoint
from kdchain.data import load_data
from kdchain.distill import evaluate, fit
from kdchain.models import build_model, count_params, describe
from kdchain.models.prune import prune_model
from kdchain.resolve import resolve_chain
from kdchain.spec import spec_from_dict
from kdchain.spec.kinds import LOSSES
from kdchain.students import build_loss, training_sample

KD = [{"kind": "kd", "weight": 0.7, "temperature": 4}, {"kind": "ce", "weight": 0.3}]
FAMILIES = {  # teacher model, the three pruned students (C at <= 1/8 of the teacher's parameters), lr
    # embed 96: at 192 (2.7M parameters) a 10-epoch teacher took 6.5 minutes here and scored 18% at difficulty 0.8
    "vit": ({"kind": "timm", "name": "vit_tiny_patch16_224",
             "model_args": {"img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 6, "num_heads": 3}},
            [{"width": 0.5}, {"width": 0.5, "depth": 0.67}, {"width": 0.5}], 1e-3),
    "convnext": ({"kind": "timm", "name": "convnext_atto"},
                 [{"width": 0.6}, {"width": 0.6}, {"width": 0.6}], 2e-3),
}


def chain_config(family: str, seed: int, args, workdir: Path) -> dict:
    model, prunes, lr = FAMILIES[family]
    train = {"epochs": args.epochs, "lr": lr, "batch_size": 64, "weight_decay": 0.05}
    return {"name": f"family-{family}", "seed": seed, "workdir": str(workdir), "measure": {"speed": False},
            "data": {"kind": "marks", "image_size": 32, "train_size": args.train_size, "val_size": 500,
                     "test_size": 2000, "difficulty": args.difficulty},
            "teacher": {"model": model, "train": train},
            "generations": [{"name": n, "student": {"prune": p}, "distill": KD, "train": train}
                            for n, p in zip("ABC", prunes)],
            "deploy": {"quantize": "none"}}


def fresh_model(c_arch, data, seed: int) -> torch.nn.Module:
    """C's architecture on initial weights: the root family newly initialised, then each link of C's pruning
    applied to it as it was to the trained models (`follow`: the same blocks removed, the same shapes)."""
    links = []
    while c_arch.kind == "pruned":
        links.append(c_arch)
        c_arch = c_arch.base
    torch.manual_seed(seed)
    model, arch = build_model(c_arch, data.num_classes, data.input_shape[0]), c_arch
    for link in reversed(links):
        model, arch = prune_model(model, arch, link.prune, training_sample(data, seed), link.keep, data.num_classes,
                                  data.input_shape[0], follow=link.record)
    return model


def fresh_arm(spec, data, c_arch, teacher, distill: list[dict], seed: int) -> tuple[float, int, float]:
    """A fresh model of C's architecture trained as generation C trains, on `distill`: (test accuracy, params, s)."""
    student = fresh_model(c_arch, data, seed)
    gen = resolve_chain(spec)[3]
    gen = replace(gen, distill=[LOSSES[t["kind"]](**{k: v for k, v in t.items() if k != "kind"}) for t in distill])
    loss = build_loss(gen, student, teacher, data.input_shape)
    t0 = time.perf_counter()
    fit(student, teacher if loss.needs_teacher else None, loss, data, gen.train, seed=spec.seed + 3)
    return evaluate(student, data.test), count_params(student), time.perf_counter() - t0


def one_seed(family: str, seed: int, args) -> dict:
    """Test accuracy, params and seconds of the chain's generations and the two fresh arms."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        spec = spec_from_dict(chain_config(family, seed, args, Path(tmp) / "work"))
        teacher_ckpt = None
        for gen in resolve_chain(spec):
            t0 = time.perf_counter()
            outcome, _ = train_generation(spec, gen.index, teacher_ckpt, Path(tmp) / gen.name)
            teacher_ckpt = Path(outcome.checkpoint)
            out[gen.name] = (outcome.metrics["test_accuracy"], int(outcome.metrics["params"]),
                             time.perf_counter() - t0)
            if gen.index == 0:
                teacher_path = teacher_ckpt
            print(f"{family} seed {seed} {gen.name}: {outcome.arch_summary}, {out[gen.name][1]:,} params, "
                  f"{100 * out[gen.name][0]:.2f} %, {out[gen.name][2]:.0f} s", flush=True)
        c_model, c_arch, _ = load_checkpoint(teacher_ckpt)
        teacher, _, _ = load_checkpoint(teacher_path)
        data = load_data(spec.data, spec.seed)
        for arm, distill in (("fresh kd", KD), ("fresh labels", [{"kind": "ce", "weight": 1.0}])):
            out[arm] = fresh_arm(spec, data, c_arch, teacher.eval(), distill, seed)
            assert out[arm][1] == count_params(c_model), (describe(c_arch), out[arm][1])
            print(f"{family} seed {seed} {arm}: {100 * out[arm][0]:.2f} %, {out[arm][2]:.0f} s", flush=True)
    return out


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def report(results: dict[str, list[dict]], args) -> str:
    rows = ["| family | model | params | / teacher | test accuracy % | per seed | s / seed |", "|---" * 7 + "|"]
    verdicts = []
    minutes = sum(arm[2] for runs in results.values() for r in runs for arm in r.values()) / 60
    for family, runs in results.items():
        teacher_params = runs[0]["teacher"][1]
        for name in ("teacher", "A", "B", "C", "fresh kd", "fresh labels"):
            accs = [100 * r[name][0] for r in runs]
            rows.append(f"| {family} | {name} | {runs[0][name][1]:,} | 1/{teacher_params / runs[0][name][1]:.1f} | "
                        f"{mean_std(accs)} | {', '.join(f'{a:.2f}' for a in accs)} | "
                        f"{statistics.mean(r[name][2] for r in runs):.0f} |")
        c = [100 * r["C"][0] for r in runs]
        best = max(("fresh kd", "fresh labels"), key=lambda a: statistics.mean(r[a][0] for r in runs))
        fresh = [100 * r[best][0] for r in runs]
        spread = max(statistics.stdev(c) if len(c) > 1 else 0.0, statistics.stdev(fresh) if len(fresh) > 1 else 0.0)
        teacher = statistics.mean(100 * r["teacher"][0] for r in runs)
        verdicts.append(f"- {family} ({len(runs)} seeds): C {statistics.mean(c) - statistics.mean(fresh):+.2f} points "
                        "over the best "
                        f"fresh arm ({best}; the larger seed std {spread:.2f}), "
                        f"{statistics.mean(c) - teacher:+.2f} against its teacher, at 1/"
                        f"{teacher_params / runs[0]['C'][1]:.1f} of its parameters.")
    return "\n".join([
        "## Today's architectures: pruned chains of a ViT and a ConvNeXt", "",
        f"Measured by `python bench/families.py --families {' '.join(results)} --seeds "
        f"{' '.join(map(str, args.seeds))} --train-size {args.train_size} --epochs {args.epochs} --difficulty "
        f"{args.difficulty}` on {args.cpu or 'this CPU'}, {minutes:.0f} minutes of training. marks 32x32, test "
        "split of 2,000 images; every model trains the same epochs; `fresh kd` and `fresh labels` are C's architecture on "
        "initial weights, distilled from the teacher or trained on labels.", "", *rows, "", *verdicts, ""])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-size", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--difficulty", type=float, default=0.3, help="marks' difficulty: at 0.8 (98.9%% for a mid "
                    "cnn) neither transformer nor ConvNeXt teacher left 13-18%% in 6-10 epochs here")
    ap.add_argument("--cpu", default="", help="the CPU's name for the report (lscpu's model name, bf16 or not)")
    ap.add_argument("--out", type=Path, default=None, help="write the table as a section of this markdown file")
    ap.add_argument("--results", type=Path, default=None, help="JSON of the finished (family, seed) runs: read "
                                                                "first (those are skipped), written after each")
    ap.add_argument("--report-only", action="store_true", help="report --results, train nothing")
    args = ap.parse_args()
    done = json.loads(args.results.read_text()) if args.results and args.results.is_file() else {}
    for family in args.families:
        for seed in args.seeds:
            if f"{family} {seed}" not in done and not args.report_only:
                done[f"{family} {seed}"] = one_seed(family, seed, args)
                if args.results:  # after each seed: a stopped study keeps what it finished
                    args.results.write_text(json.dumps(done))
    results = {f: [done[f"{f} {s}"] for s in args.seeds if f"{f} {s}" in done] for f in args.families}
    text = report({f: runs for f, runs in results.items() if runs}, args)
    print(text)
    if args.out is not None:
        from quality import write_section

        write_section(args.out, "families", text)


if __name__ == "__main__":
    main()
