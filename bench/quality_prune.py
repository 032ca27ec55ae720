"""The pruning study: does a chain whose generations inherit their teacher's weights (structured pruning, then
distillation) beat the fresh chain, direct distillation and labels alone at the same sizes?

For each seed, one teacher (trained by the first variant, then loaded with `teacher.from` by all the others), and
for students B and C (the sizes the config's chain resolves to), each a real `distill-chain` run in MLflow:
  labels          - fresh weights, the labels alone (ce)
  direct kd       - fresh weights, distilled from the teacher (kd 0.7, T 4 + ce 0.3)
  chain kd        - fresh weights at its place in teacher -> A -> B -> C (the config's default, direct teachers)
  pruned chain    - A pruned from the teacher, B from A, C from B (round_to 1, so sizes match the derived ones),
                    each then distilled (kd)
  pruned direct   - the teacher pruned straight to B's / C's size, then distilled (kd)
It prints C's (and B's) test accuracy, params, C's validation accuracy after each epoch and each variant's wall
time, and writes the section `quality-prune:<data>` of docs/results.md.

    PREFECT_HOME=/tmp/prefect-quality python bench/quality_prune.py --data digits --seeds 0 1 2
"""

import argparse
import copy
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from _common import ROOT  # noqa: E402
from quality import LABELS, METHODS, base_config, mean_std, write_section  # noqa: E402

from kdchain.models import derive_arch  # noqa: E402
from kdchain.resolve import resolve_chain  # noqa: E402
from kdchain.spec import Derive, spec_from_dict  # noqa: E402

KD = METHODS["kd"]


def prune_settings(cfg: dict) -> dict[str, dict]:
    """Per generation: the prune that gives the derived student's size from its teacher (a cnn chain's `derive`
    widths; a depth below 1 removes as many convs per stage as derive drops, at least the share needed)."""
    convs = cfg["teacher"]["model"].get("convs_per_stage", 1)
    out = {}
    for g in cfg["generations"]:
        if "prune" in g["student"]:  # the config prunes already (the default chains): as it says, sizes as derive's
            out[g["name"]] = {"depth": 1.0, **g["student"]["prune"], "round_to": 1}
            continue
        d = g["student"]["derive"]
        depth = d.get("depth", 1.0)
        if depth < 1:  # derive keeps round(n * depth) convs per stage; pruning may drop the n - 1 after the first
            kept = max(1, round(convs * depth))
            depth = max(0.01, 1 - (convs - kept) / (convs - 1))
            convs = kept
        out[g["name"]] = {"width": d["width"], "depth": depth, "round_to": 1}
    return out


def variants(cfg: dict, seed: int, teacher_ckpt: str | None) -> dict[str, dict]:
    resolved = resolve_chain(spec_from_dict({**cfg, "seed": seed}))
    # the fresh variants' students: a pruned generation's size as a fresh model (what derive width 1.0 gives)
    arch = {g.name: (derive_arch(g.arch, Derive(width=1.0)) if g.arch.kind == "pruned" else g.arch).model_dump(mode="json")
            for g in resolved}
    train = {g["name"]: g.get("train", {}) for g in cfg["generations"]}
    prunes = prune_settings(cfg)
    names = [g["name"] for g in cfg["generations"]]
    out = {}

    def chain(name, gens):
        c = copy.deepcopy(cfg) | {"seed": seed, "name": f"qprune-{name}-s{seed}", "generations": gens}
        if teacher_ckpt is not None:
            c["teacher"] = {"from": teacher_ckpt}
        c["tracking"] = dict(cfg["tracking"], register_as=f"{c['name']}-student")
        out[name] = c

    chain("chain-kd", [{"name": n, "student": arch[n], "distill": KD, "train": train[n]} for n in names])
    chain("pruned-chain", [{"name": n, "student": {"prune": prunes[n]}, "distill": KD, "train": train[n]}
                           for n in names])
    for i, student in reversed(list(enumerate(names[1:], start=1))):  # C's variants first
        chain(f"labels-{student}", [{"name": student, "student": arch[student], "distill": LABELS,
                                     "train": train[student]}])
        chain(f"direct-kd-{student}", [{"name": student, "student": arch[student], "distill": KD,
                                        "train": train[student]}])
        width = depth = 1.0
        for n in names[:i + 1]:
            width, depth = width * prunes[n]["width"], min(depth, prunes[n]["depth"])
        chain(f"pruned-direct-{student}", [{"name": student, "distill": KD, "train": train[student],
                                            "student": {"prune": {"width": width, "depth": depth, "round_to": 1}}}])
    return out


def label(name: str) -> str:
    for prefix, text in (("labels", "labels"), ("direct-kd", "direct kd (fresh)"), ("chain-kd", "chain kd (fresh)"),
                         ("pruned-chain", "pruned chain"), ("pruned-direct", "pruned direct")):
        if name.startswith(prefix):
            return text
    return name


def report(data: str, rows: dict, curves: dict, seconds: dict, teacher: list[float], args, total: float) -> str:
    """rows[(student, variant)] = [(test accuracy, params)], curves[variant] = [per-epoch val accuracy of C]."""
    cmd = "python bench/quality_prune.py " + " ".join(sys.argv[1:])
    lines = [f"## pruning study: {data}", "",
             f"Measured by `PREFECT_HOME=... {cmd}` on the shared CPU, seeds {', '.join(map(str, args.seeds))}, "
             f"{total / 60:.1f} min of chain runs in all. Teacher test accuracy: {mean_std(teacher)} %. Each variant is a "
             "`distill-chain` run (experiment `quality-" + data + "`).", "",
             "| student | variant | params | test accuracy % (mean ± std) | per seed | wall s / seed |",
             "|---|---|---|---|---|---|"]
    for (student, variant), xs in sorted(rows.items()):
        accs = [a for a, _ in xs]
        lines.append(f"| {student} | {variant} | {int(statistics.mean(p for _, p in xs)):,} | {mean_std(accs)} | "
                     f"{', '.join(f'{a * 100:.2f}' for a in accs)} | {statistics.mean(seconds[variant, student]):.0f} |")
    epochs = max(len(run) for runs in curves.values() for run in runs)
    lines += ["", "C's validation accuracy % after each epoch (mean over seeds):", "",
              "| variant | " + " | ".join(f"ep {i + 1}" for i in range(epochs)) + " |", "|---|" + "---|" * epochs]
    for variant, runs in sorted(curves.items()):
        mean = [statistics.mean(r[i] for r in runs) * 100 for i in range(min(map(len, runs)))]
        lines.append(f"| {variant} | " + " | ".join(f"{m:.1f}" for m in mean) + " |")
    return "\n".join(lines + [""])


def finished_chains(client, experiment: str) -> dict[str, tuple]:
    """{chain name: (chain run, {generation name: generation run})} for the FINISHED chain runs of the study."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    gens: dict[str, dict] = {}
    for r in runs:
        if r.data.tags.get("kdchain.kind") == "generation" and r.info.status == "FINISHED":
            gens.setdefault(r.data.tags.get("mlflow.parentRunId"), {})[r.data.tags["kdchain.generation_name"]] = r
    return {r.data.tags["kdchain.chain"]: (r, gens.get(r.info.run_id, {})) for r in runs
            if r.data.tags.get("kdchain.kind") == "chain" and r.info.status == "FINISHED"}


def collect(clients: list, experiment: str, seeds: list[int]):
    """The study's rows, C's curves, wall times and teacher accuracies, read back from the MLflow store (so a study
    that was stopped reports what it finished, and a rerun with the same --store skips it)."""
    rows, curves, seconds, teacher, total = {}, {}, {}, [], 0.0
    chains = {name: (client, *found) for client in clients for name, found in finished_chains(client, experiment).items()}
    for seed in seeds:
        for name, (client, run, gens) in sorted(chains.items()):
            if not name.startswith("qprune-") or not name.endswith(f"-s{seed}"):
                continue
            variant = name[len("qprune-"):-len(f"-s{seed}")]
            total += (run.info.end_time - run.info.start_time) / 1000
            if variant == "chain-kd" and "teacher" in gens:
                teacher.append(gens["teacher"].data.metrics["test_accuracy"])
            for student in ("B", "C"):
                if student in gens:
                    m = gens[student].data.metrics
                    rows.setdefault((student, label(variant)), []).append((m["test_accuracy"], m["params"]))
                    seconds.setdefault((label(variant), student), []).append(
                        (run.info.end_time - run.info.start_time) / 1000)
            if "C" in gens:
                history = client.get_metric_history(gens["C"].info.run_id, "val_accuracy")
                curves.setdefault(label(variant), []).append([m.value for m in sorted(history, key=lambda m: m.step)])
    return rows, curves, seconds, teacher, total


def teacher_checkpoint(chains: dict, seed: int) -> str | None:
    """The teacher the seed's first variant trained (the others load it with `teacher.from`)."""
    found = chains.get(f"qprune-chain-kd-s{seed}")
    return found[1]["teacher"].data.tags["kdchain.checkpoint"] if found and "teacher" in found[1] else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=["digits", "marks"], default="digits")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="epochs of every generation; default: the config's")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="dotted.key=value on the config")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    ap.add_argument("--store", help="the study's folder (MLflow store + workdir); a rerun skips the variants it "
                                    "finished. Default: a new temporary folder")
    ap.add_argument("--report-only", action="store_true", help="write the report from --store, train nothing")
    ap.add_argument("--also-from", nargs="*", default=[], help="other study folders whose finished variants the "
                                                                "report includes (seeds run in parallel)")
    args = ap.parse_args()
    tmp = Path(args.store) if args.store else Path(tempfile.mkdtemp(prefix="kdchain-qprune-"))
    uri = f"sqlite:///{tmp / 'store' / 'mlflow.db'}"
    print(f"study folder {tmp}", flush=True)

    import logging

    from mlflow import MlflowClient

    from flows.chain import distill_chain
    from kdchain.tracking import prepare_store

    prepare_store(uri)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    client = MlflowClient(uri)
    cfg = base_config(args.data, args.overrides, args.epochs, tmp / "work", uri)
    experiment = cfg["tracking"]["experiment"]
    for seed in [] if args.report_only else args.seeds:
        for name in variants(cfg, seed, None):
            chains = finished_chains(client, experiment)
            if f"qprune-{name}-s{seed}" in chains:
                continue
            c = variants(cfg, seed, teacher_checkpoint(chains, seed))[name]
            result = distill_chain(spec_from_dict(c, name), tracking_uri=uri)  # a resumed study reuses finished generations
            print(f"seed {seed} {name}: " + ", ".join(f"{g.name} {g.metrics['test_accuracy']:.4f} "
                                                      f"({g.metrics['params']:.0f})" for g in result.generations)
                  + f"  {result.seconds:.0f} s", flush=True)
    clients = [client] + [MlflowClient(f"sqlite:///{Path(d) / 'store' / 'mlflow.db'}") for d in args.also_from]
    rows, curves, seconds, teacher_acc, total = collect(clients, experiment, args.seeds)
    text = report(args.data, rows, curves, seconds, teacher_acc, args, total)
    print(text)
    write_section(Path(args.out), f"prune-{args.data}", text)


if __name__ == "__main__":
    main()
