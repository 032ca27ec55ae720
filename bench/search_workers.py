"""Wall time of a generation-A search on `marks` with 1 and with 2 local Dask workers, and how its winner compares
with the best candidate within budget.

    python bench/search_workers.py [--train-size 5000] [--proxy-epochs 3] [--difficulty 0.8] [--verify]

The teacher is trained once (library call); then the same search (16 candidates: 8 widths x 2 depths, 12 of them
within the params budget, every in-budget candidate a trial; no augmentation, so the teacher's outputs are cached) runs as the Prefect subflow `search-generation` on a local Dask cluster
of 1, then 2 worker processes (1 torch thread each). Prints one line per run and the winner's gap to the best
trial. `--verify` then trains every in-budget candidate for the generation's full epochs (library calls, the same
loss and seed) and prints how far the searched winner's full-training val accuracy is from the best of them: the
question the search answers is whether its short proxies pick a model as good as training them all would.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (this checkout on sys.path)

os.environ.setdefault("PREFECT_HOME", "/tmp/prefect-kdchain-bench")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-size", type=int, default=5000)
    ap.add_argument("--proxy-epochs", type=int, default=3)
    ap.add_argument("--difficulty", type=float, default=0.8)
    ap.add_argument("--verify", action="store_true", help="train every in-budget candidate fully and compare")
    ap.add_argument("--max-params", type=int, default=60000)
    args = ap.parse_args()

    from flows.generation import GenerationResult
    from flows.search import searched_spec
    from kdchain.chain import train_generation
    from kdchain.checkpoints import ARCH
    from kdchain.checks import check_chain
    from kdchain.resolve import file_digest
    from kdchain.search import _with_student, candidates
    from kdchain.spec import spec_from_dict
    from kdchain.tracking import Tracker

    tmp = Path(tempfile.mkdtemp(prefix="search-bench-"))
    cfg = {"name": "marks-search", "seed": 0, "workdir": str(tmp / "work"),
           "data": {"kind": "marks", "train_size": args.train_size, "val_size": 1000, "test_size": 1000,
                    "image_size": 32, "difficulty": args.difficulty,
                    "augment": {"crop_padding": 0, "flip": False}},
           "teacher": {"model": {"kind": "cnn", "channels": [32, 64, 128], "convs_per_stage": 2},
                       "train": {"epochs": 10, "lr": 0.003, "batch_size": 128, "threads": 2}},
           "generations": [{"name": "A", "student": {"derive": {"width": 0.5}},
                            "train": {"epochs": 8, "lr": 0.003, "batch_size": 128},
                            "search": {"space": {"width": [0.25, 0.3125, 0.375, 0.4375, 0.5, 0.5625, 0.625, 0.75],
                                                 "depth": [0.5, 1.0]},
                                       "budget": {"max_params": args.max_params}, "trials": 12,
                                       "proxy_epochs": args.proxy_epochs, "prune": False,
                                       "runner": {"kind": "dask", "workers": 1}}}],
           "tracking": {"uri": f"sqlite:///{tmp / 'store' / 'mlflow.db'}"}}
    spec = spec_from_dict(cfg)
    gens = check_chain(spec)
    cands = candidates(spec, 1, gens[0].arch)
    fit = [c for c in cands if not c.over_budget]
    print(f"{len(cands)} candidates, {len(fit)} within max_params={args.max_params}")

    t0 = time.perf_counter()
    out = tmp / "work" / "teacher"
    out.mkdir(parents=True)
    outcome, _ = train_generation(spec, 0, None, out)
    print(f"teacher trained in {time.perf_counter() - t0:.0f} s: val {outcome.metrics['val_accuracy']:.4f}")
    teacher = GenerationResult(index=0, name="teacher", summary=outcome.arch_summary, run_id="-",
                               checkpoint=outcome.checkpoint, checkpoint_digest=file_digest(Path(outcome.checkpoint)),
                               model_uri="-", metrics=outcome.metrics)
    uri = cfg["tracking"]["uri"]
    tracker = Tracker(uri, spec.experiment_name())
    for workers in (1, 2):
        run_cfg = spec_from_dict({**cfg, "workdir": str(tmp / f"work-{workers}")})
        g = run_cfg.generations[0]
        g.search = g.search.model_copy(update={"runner": g.search.runner.model_copy(update={"workers": workers})})
        chain_run_id, _ = tracker.chain_run(run_cfg, f"bench-{workers}", "", fresh=True)
        t0 = time.perf_counter()
        _, result = searched_spec(run_cfg, 1, teacher, outcome.metrics["val_accuracy"], chain_run_id, uri)
        wall = time.perf_counter() - t0
        done = [t for t in result.trials if t.state == "complete"]
        best = max(t.val_accuracy for t in done)
        win = result.winning()
        pids = sorted({t.worker for t in result.trials})
        print(f"dask workers={workers}: {len(result.trials)} trials in {wall:.1f} s wall "
              f"(sum of trial times {sum(t.seconds for t in result.trials):.1f} s) on {len(pids)} worker(s); "
              f"winner trial {win.number} {win.summary} params {win.cost['params']:,.0f} val {win.val_accuracy:.4f}; "
              f"best in budget {best:.4f}; gap {100 * (best - win.val_accuracy):.2f} points")
        tracker.finish_chain(chain_run_id)
    if not args.verify:
        return
    full = {}
    for c in fit:
        t0 = time.perf_counter()
        one = _with_student(spec, 1, ARCH.validate_python(c.arch), c.params)
        out = tmp / "verify" / c.summary.replace(" ", "_")
        out.mkdir(parents=True)
        cand_outcome, _ = train_generation(one, 1, Path(outcome.checkpoint), out)
        full[c.summary] = cand_outcome.metrics["val_accuracy"]
        print(f"  full training {c.summary} ({c.cost['params']:,.0f} params): val {full[c.summary]:.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    best_name = max(full, key=full.get)
    print(f"verify: searched winner {win.summary} val {full[win.summary]:.4f} after full training; best in budget "
          f"{best_name} {full[best_name]:.4f}; gap {100 * (full[best_name] - full[win.summary]):.2f} points "
          f"(target <= 1)")


if __name__ == "__main__":
    main()
