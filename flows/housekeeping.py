"""`kdchain runs` and `kdchain clean`: the generation folders of a workdir, which chain runs use each, and deleting
the ones no finished chain run (nor a registered model) needs. Neither trains nor starts Prefect."""

import argparse
import sys
from pathlib import Path

from rich.table import Table

from flows import progress
from flows.command_helpers import EXIT_USAGE
from flows.tables import fmt_int


def add_workdir_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, nargs="?", help="a chain YAML: its workdir and store (default: the project's)")
    p.add_argument("--workdir", type=Path, help="the workdir to read (default: the config's, else mlruns/kdchain)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the config's, $MLFLOW_TRACKING_URI or the "
                                          "project store)")


def _age(seconds: float) -> str:
    for unit, div in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= div:
            return f"{seconds / div:.0f} {unit}"
    return f"{seconds:.0f} s"


def _inventory(args, keep_last: int | None):
    from kdchain.locks import lock_folder
    from kdchain.spec import ChainSpec, load_spec
    from kdchain.tracking import resolve_uri, sqlite_path
    from kdchain.tracking.reuse import store_references
    from kdchain.workdir import generation_folders, judge

    spec = load_spec(args.config, []) if args.config else None
    workdir = args.workdir or Path(spec.workdir if spec else ChainSpec.model_fields["workdir"].default)
    uri = resolve_uri(args.tracking_uri, spec.tracking.uri if spec else None)
    held = generation_folders(workdir)
    judge(held, store_references(uri), lock_folder(sqlite_path(uri), workdir), keep_last)
    return workdir, uri, held


def cmd_runs(args) -> int:
    workdir, uri, held = _inventory(args, None)
    if not held:
        print(f"no generation folders in {workdir}")
        return 0
    table = Table(title=f"{workdir}: {len(held)} generation folders, {fmt_int(sum(h.size for h in held))}B "
                        f"(store {uri})", title_justify="left")
    for col in ("folder", "size", "age", "chain runs using it", "kept because"):
        table.add_column(col, justify="right" if col in ("size", "age") else "left")
    for h in held:
        table.add_row(str(h.folder.relative_to(Path(workdir).resolve())), fmt_int(h.size) + "B", _age(h.age_s),
                      "\n".join(h.chain_runs) or "-", h.reason or "[bold]unreferenced[/] (kdchain clean deletes it)")
    progress.console.print(table)
    return 0


def cmd_clean(args) -> int:
    from kdchain.workdir import delete, unreferenced_records

    if args.keep_last is not None and args.keep_last < 1:
        print(f"kdchain clean: --keep-last {args.keep_last} must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    workdir, uri, held = _inventory(args, args.keep_last)
    doomed = [h for h in held if not h.reason]
    records = unreferenced_records(workdir, held)
    verb = "would delete" if args.dry_run else "deleted"
    for h in doomed:
        print(f"{verb} {h.folder} ({fmt_int(h.size)}B, {_age(h.age_s)} old, "
              f"{'used by ' + ', '.join(h.chain_runs) if h.chain_runs else 'no chain run uses it'})")
    for r in records:
        print(f"{verb} {r} (Prefect result record)")
    if not args.dry_run:
        delete([h.folder for h in doomed] + records)
    kept = len(held) - len(doomed)
    print(f"{verb} {len(doomed)} generation folder(s), {fmt_int(sum(h.size for h in doomed))}B; kept {kept}")
    return 0
