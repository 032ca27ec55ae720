"""`kdchain sweep CONFIG --set-grid key=v1,v2 ... --seeds 0 1 2 [--runner dask|threads] [--address tcp://...]`:
every combination of the grid's values times the seeds, each a chain run, at once on a Dask cluster or threads;
then test accuracy mean ± std per grid point and generation, printed and on the MLflow sweep run.

Every chain's config is loaded and checked before Prefect starts: a bad key or value exits 2 with one line.
"""

import argparse
import os
import time
from pathlib import Path

from rich.table import Table

from flows import progress
from flows.command_helpers import fail
from flows.startup import start, watched
from flows.tables import fmt_int


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="chain YAML, e.g. configs/digits-chain.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field in every chain (repeatable)")
    p.add_argument("--set-grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="values to sweep, e.g. --set-grid generations.C.train.epochs=10,20 (repeatable: every "
                        "combination runs)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="SEED",
                   help="each grid point once per seed (default: 0)")
    p.add_argument("--runner", choices=["dask", "threads"], default="dask",
                   help="dask: a local Dask cluster of --workers processes, or the scheduler at --address "
                        "(default); threads: a thread pool in this process")
    p.add_argument("--address", metavar="tcp://HOST:8786", help="an existing Dask scheduler (--runner dask); its "
                   "workers must import kdchain and reach the workdir, the MLflow store and the Prefect API")
    p.add_argument("--workers", type=int, help="chains at a time (default: the number of chains, at most the cores)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the config's tracking.uri, then "
                                          "$MLFLOW_TRACKING_URI, then the project store)")


def sweep_settings(args):
    """The command line as a SweepSpec; SpecError (one line) for a malformed flag."""
    from kdchain.spec import SearchRunner, SpecError, SweepSpec
    from kdchain.sweep import parse_grid

    if len(set(args.seeds)) < len(args.seeds):
        raise SpecError(["kdchain sweep: --seeds: a seed is given twice"])
    if args.workers is not None and args.workers < 1:
        raise SpecError([f"kdchain sweep: --workers {args.workers}: give at least 1"])
    if args.address and args.runner != "dask":
        raise SpecError(["kdchain sweep: --address is a Dask scheduler's; give it with --runner dask"])
    grid = parse_grid(args.set_grid)
    chains = len(args.seeds) * max(1, _product(len(v) for v in grid.values()))
    workers = args.workers or max(1, min(chains, os.cpu_count() or 1))
    return SweepSpec(config=str(args.config), sets=args.set or [], grid=grid, seeds=args.seeds,
                     runner=SearchRunner(kind=args.runner, address=args.address, workers=workers))


def _product(xs) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def summary_table(result, seeds: list[int], title: str) -> Table:
    """Per grid point and generation: params, test accuracy mean ± std over the seeds, each seed's, status."""
    from kdchain.sweep import mean_std

    table = Table(title=title, title_justify="left")
    for col in ("grid point", "gen", "architecture", "params", "test acc % (mean ± std)",
                *(f"seed {s}" for s in seeds), "status"):
        table.add_column(col, justify="right" if col == "params" or col.startswith(("test", "seed")) else "left")
    last = None
    for r in result.rows:
        accs = list(r.accuracy.values())
        per_seed = ["failed" if s in r.failed else ("-" if s not in r.accuracy else f"{r.accuracy[s]:.2%}")
                    for s in seeds]
        table.add_row(r.label if r.label != last else "", r.generation, r.architecture or "-", fmt_int(r.params),
                      mean_std(accs) if accs else "-", *per_seed, r.status, end_section=False)
        last = r.label
    return table


def cmd_sweep(args) -> int:
    from kdchain.sweep import plan_sweep

    settings = sweep_settings(args)
    jobs = plan_sweep(settings)  # every chain's config checked: SpecError (exit 2) before anything runs
    # the Dask workers' Prefect console (they inherit this environment): warnings only, as the command's own
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")  # nor Dask's notes on cancelled tasks at Ctrl-C
    points = len({j.point for j in jobs})
    where = (f"the Dask scheduler at {settings.runner.address}" if settings.runner.address else
             f"{settings.runner.workers} {'Dask worker processes' if args.runner == 'dask' else 'threads'}")
    title = f"{jobs[0].spec.name} · " + (" · ".join(f"{k}={','.join(v)}" for k, v in settings.grid.items())
                                         or "config") + f" · seeds {' '.join(map(str, settings.seeds))}"
    started = start(jobs[0].spec, args, f"kdchain: sweep [bold]{jobs[0].spec.name}[/] — {len(jobs)} chains "
                    f"({points} grid point(s) × {len(settings.seeds)} seed(s)) on {where} (starting Prefect)",
                    flow_module="flows.sweep")
    if isinstance(started, int):
        return started
    from flows.sweep import run_sweep

    t0 = time.time()
    ended, result = watched(lambda: run_sweep(jobs, title, settings, args.tracking_uri),
                            lambda line: line.replace("run the same command", "run the same sweep"))
    if ended is not None:
        return ended
    progress.console.print(summary_table(result, settings.seeds, f"sweep {title}: test accuracy over seeds "
                                                                 f"({time.time() - t0:.0f} s)"))
    progress.console.print(f"MLflow store {result.tracking_uri}, experiment {result.experiment!r}, sweep run "
                           f"{result.sweep_run_id} (its chain runs are tagged kdchain.sweep_run_id)", soft_wrap=True)
    if result.failed:
        return fail([f"kdchain sweep: {len(result.failed)} of {len(jobs)} chains failed:"]
                     + [f"  {o.label} · seed {o.seed}: {o.error}" for o in result.failed], 1)
    return 0
