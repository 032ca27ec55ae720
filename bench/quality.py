"""The study: does distillation help the small students, and does the chain beat distilling directly?

For each seed, one teacher (trained once, then loaded with `teacher.from` so every variant of that seed shares it),
and for student B and student C (the architectures the config's chain resolves to):
  labels   - the student trained on the labels alone (ce)
  direct   - distilled directly from the teacher (teacher -> B, teacher -> C)
  chain    - at its place in teacher -> A -> B -> C
each of direct/chain for `kd` (kd 0.7, T 4 + ce 0.3) and `kd+feature` (+ feature MSE 0.5 on the last maps).
Every variant is a real `distill-chain` flow run, recorded in MLflow (experiment `quality-<data>`); they run as
one sweep (flows/sweep.py: the variants x seeds at once on a local Dask cluster, or threads, under a parent MLflow
sweep run). Each seed's teacher is trained once: the other variants of that seed have the same teacher, so its
generation key, and reuse it. The table of test accuracies (mean ± sample std over the seeds, the sweep's summary)
goes into docs/results.md, in this data set's section.

    PREFECT_HOME=/tmp/prefect-quality python bench/quality.py --data digits --seeds 0 1 2 --epochs 4
"""

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import yaml  # noqa: E402
from _common import ROOT  # noqa: E402

from kdchain.resolve import resolve_chain  # noqa: E402
from kdchain.spec import SearchRunner, SweepSpec, apply_override, spec_from_dict  # noqa: E402
from kdchain.sweep import SweepJob, mean_std  # noqa: E402

CONFIGS = {"digits": ROOT / "configs" / "digits-chain.yaml", "marks": ROOT / "configs" / "marks-chain.yaml"}
METHODS = {
    "kd": [{"kind": "kd", "weight": 0.7, "temperature": 4.0}, {"kind": "ce", "weight": 0.3}],
    "kd+feature": [{"kind": "kd", "weight": 0.7, "temperature": 4.0}, {"kind": "ce", "weight": 0.3},
                   {"kind": "feature", "weight": 0.5}],
}
LABELS = [{"kind": "ce", "weight": 1.0}]


def base_config(data: str, overrides: list[str], epochs: int | None, workdir: Path, uri: str) -> dict:
    """The config's teacher and its first three generations (A, B, C), with the study's workdir and store."""
    cfg = yaml.safe_load(CONFIGS[data].read_text())
    cfg["generations"] = cfg["generations"][:3]
    for o in overrides:
        apply_override(cfg, o)
    if epochs:
        for part in [cfg["teacher"]] + cfg["generations"]:
            part.setdefault("train", {})["epochs"] = epochs
    cfg["workdir"] = str(workdir)
    cfg["tracking"] = {"uri": uri, "experiment": f"quality-{data}"}
    return cfg


def variants(cfg: dict, seed: int) -> dict[str, dict]:
    """{variant name: chain config} for one seed; every one has the config's teacher (trained once per seed)."""
    resolved = resolve_chain(spec_from_dict({**cfg, "seed": seed}))
    arch = {g.name: g.arch.model_dump(mode="json") for g in resolved}
    train = {g["name"]: g.get("train", {}) for g in cfg["generations"]}
    out = {}

    def chain(name, gens):
        c = copy.deepcopy(cfg) | {"seed": seed, "name": f"quality-{name.replace('+', '-')}-s{seed}",
                                  "generations": gens}
        c["tracking"] = dict(cfg["tracking"], register_as=f"{c['name']}-student")
        out[name] = c

    for method, distill in METHODS.items():
        chain(f"chain-{method}", [{"name": g["name"], "student": arch[g["name"]], "distill": distill,
                                  "train": train[g["name"]]} for g in cfg["generations"]])
    names = [g["name"] for g in cfg["generations"]][1:]  # B, C
    for student in names:
        for method, distill in METHODS.items():
            chain(f"direct-{method}-{student}", [{"name": student, "student": arch[student], "distill": distill,
                                                  "train": train[student]}])
        chain(f"labels-{student}", [{"name": student, "student": arch[student], "distill": LABELS,
                                     "train": train[student]}])
    return out


def report(data: str, acc: dict, teacher: list[float], args, seconds: float, device: str, sweep_run: str) -> str:
    """The markdown section of this data set: acc[(student, variant)] = [test accuracy per seed]."""
    rows = ["| student | variant | test accuracy % (mean ± std) | per seed |", "|---|---|---|---|"]
    for (student, variant), xs in acc.items():
        rows.append(f"| {student} | {variant} | {mean_std(xs)} | {', '.join(f'{x * 100:.2f}' for x in xs)} |")
    diffs = ["| student | comparison | difference, points (mean ± std over seeds) |", "|---|---|---|"]
    for student in sorted({s for s, _ in acc}):
        for method in METHODS:
            for a, b in ((f"direct {method}", "labels"), (f"chain {method}", "labels"),
                         (f"chain {method}", f"direct {method}")):
                d = [x - y for x, y in zip(acc[(student, a)], acc[(student, b)])]
                diffs.append(f"| {student} | {a} − {b} | {mean_std(d)} |")
    cmd = "python bench/quality.py " + " ".join(sys.argv[1:])
    return "\n".join([
        f"## {data}", "",
        f"Measured by `PREFECT_HOME=... {cmd}` on {device}, {len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), "
        f"{args.epochs or 'the config''s'} epochs per generation, {seconds / 60:.1f} min in all. "
        f"Teacher test accuracy: {mean_std(teacher)} %. Every variant is one `distill-chain` run in MLflow "
        f"(experiment `quality-{data}`, store `{args.tracking_uri}`), all under sweep run `{sweep_run}`.", "",
        *rows, "", *diffs, ""])


def write_section(path: Path, data: str, text: str) -> None:
    begin, end = f"<!-- quality:{data} -->", f"<!-- /quality:{data} -->"
    old = path.read_text() if path.is_file() else "# Results of the distillation study (bench/quality.py)\n\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in old:
        old = old[:old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        old = old.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(old)


def jobs_of(cfg: dict, seeds: list[int]) -> list[SweepJob]:
    """One sweep job per variant and seed; the variant is the grid point. Variant-major, so that the first chains
    to start are one per seed, each training its seed's teacher, which the later ones reuse."""
    configs = {seed: variants(cfg, seed) for seed in seeds}
    return [SweepJob(point=point, label=name, seed=seed, spec=spec_from_dict(configs[seed][name], name))
            for point, name in enumerate(configs[seeds[0]]) for seed in seeds]


def accuracies(result, cfg: dict, seeds: list[int]) -> tuple[dict, list[float]]:
    """From the sweep's summary: acc[(student, variant)] = [test accuracy per seed], and the teachers'."""
    failed = [f"{o.label} seed {o.seed}: {o.error}" for o in result.failed]
    if failed:
        raise SystemExit("chains failed:\n" + "\n".join(failed))
    students = [g["name"] for g in cfg["generations"]][1:]  # B, C
    acc: dict[tuple[str, str], list[float]] = {}
    teacher: list[float] = []
    for row in result.rows:
        kind, _, rest = row.label.partition("-")
        per_seed = [row.accuracy[s] for s in seeds]
        if row.generation == "teacher" and row.point == 0:
            teacher = per_seed
        elif row.generation in students and (kind == "chain" or rest.endswith(row.generation)):
            method = rest.rsplit("-", 1)[0] if kind == "direct" else rest
            acc[(row.generation, "labels" if kind == "labels" else f"{kind} {method}")] = per_seed
    return dict(sorted(acc.items())), teacher


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=sorted(CONFIGS), default="digits")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="epochs of every generation; default: the config's")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="dotted.key=value on the config")
    ap.add_argument("--tracking-uri", default=None, help="default: a new sqlite store in a temporary folder")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--runner", choices=["dask", "threads"], default="dask", help="where the chains run at once")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="chains at a time")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kdchain-quality-"))
    args.tracking_uri = args.tracking_uri or f"sqlite:///{tmp / 'store' / 'mlflow.db'}"
    workdir = Path(args.workdir or tmp / "work")

    import logging

    from flows import server
    from flows.command_helpers import quiet_console

    server.prestart()  # a kept server, or a temporary one (given time to migrate a fresh PREFECT_HOME)
    from flows.sweep import run_sweep  # prefect imported here, after the environment is set
    from kdchain.distill import pick_device
    from kdchain.tracking import prepare_store

    prepare_store(args.tracking_uri)
    quiet_console()
    logging.getLogger("mlflow").setLevel(logging.ERROR)  # the per-model pickle-format warning, 100 times
    cfg = base_config(args.data, args.overrides, args.epochs, workdir, args.tracking_uri)
    settings = SweepSpec(config=str(CONFIGS[args.data]), sets=args.overrides, seeds=args.seeds,
                         runner=SearchRunner(kind=args.runner, workers=args.workers))
    t0 = time.time()
    server.ready()
    result = run_sweep(jobs_of(cfg, args.seeds), f"quality-{args.data}", settings, args.tracking_uri)
    acc, teacher_acc = accuracies(result, cfg, args.seeds)
    text = report(args.data, acc, teacher_acc, args, time.time() - t0, str(pick_device(cfg.get("device", "auto"))),
                  result.sweep_run_id)
    print(text)
    write_section(Path(args.out), args.data, text)


if __name__ == "__main__":
    main()
