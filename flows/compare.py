"""`kdchain compare`: the generation table of the latest (or one, or every) chain run, read back from the MLflow
store (through kdchain.tracking); it neither trains nor starts Prefect."""

import argparse
import csv
import json
import os
import sys

from rich.table import Table

from flows import progress
from flows.command_helpers import fail
from flows.tables import fmt_int, generation_table


def _pct(v) -> str:
    return "-" if v is None else f"{v:.2%}"


# ---------------------------------------------------------------------------------------------- compare


def add_compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", help="MLflow experiment (default: that of --run, else of the latest chain run)")
    p.add_argument("--tracking-uri")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--run", metavar="ID", help="one chain run (its id, as `kdchain run` prints it) instead of the latest")
    which.add_argument("--all", action="store_true", help="every chain run of the experiment with its final student")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON on stdout instead of the table")
    fmt.add_argument("--csv", action="store_true", help="CSV on stdout instead of the table")


# beside fp32 when the chain has `deploy: {quantize: ...}` (empty otherwise)
INT8_COLUMNS = ["size_bytes_onnx", "test_accuracy_int8", "latency_ms_int8", "throughput_ips_int8", "size_bytes_int8",
                "int8_over_max_drop"]
GENERATION_COLUMNS = ["generation", "name", "summary", "run_id", "test_accuracy", "val_accuracy", "params", "flops",
                      "latency_ms", "size_bytes", "retention", "teacher_agreement", *INT8_COLUMNS, "vs_champion"]
CHAIN_COLUMNS = ["chain_run_id", "run_name", "started", "status", "generations", "teacher_test_accuracy", "final",
                 "final_summary", "final_run_id", "test_accuracy", "val_accuracy", "params", "flops", "latency_ms",
                 "size_bytes", "retention", "teacher_agreement", *INT8_COLUMNS]


def _write_csv(rows: list[dict], columns: list[str]) -> None:
    writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    try:
        writer.writeheader()
        writer.writerows(rows)
        sys.stdout.flush()
    except BrokenPipeError:  # `kdchain compare --csv | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def cmd_compare(args) -> int:
    """`kdchain compare`: the generation table of the latest (or one, or every) chain run, from MLflow."""
    from kdchain.tracking import experiment_of_run, latest_chain_experiment, open_tracker, resolve_uri, tracking_problem

    uri = resolve_uri(args.tracking_uri)
    unusable = tracking_problem(uri)  # an unknown scheme or a server that does not answer: one line, within 8 s
    if unusable:
        return fail(f"kdchain compare: {unusable}")
    experiment = args.experiment
    if experiment is None and args.run:
        experiment = experiment_of_run(uri, args.run)
        if experiment is None:
            return fail(f"kdchain compare: --run {args.run}: no such run in {uri}; `kdchain compare --all` lists them")
    experiment = experiment or latest_chain_experiment(uri)
    if experiment is None:
        return fail(f"kdchain compare: no chain runs in {uri}; run `kdchain run CONFIG` first")
    tracker = open_tracker(uri, experiment)
    if tracker is None:
        return fail(f"kdchain compare: no experiment {experiment!r} in {uri}")

    if args.all:
        chains = tracker.chain_summaries()
        if args.json:
            print(json.dumps({"experiment": experiment, "chain_runs": chains}, indent=2))
        elif args.csv:
            _write_csv(chains, CHAIN_COLUMNS)
        else:
            progress.console.print(_chains_table(chains, f"{experiment}: {len(chains)} chain run(s), final students"))
        return 0

    if args.run and not tracker.chain_run_exists(args.run):
        return fail(f"kdchain compare: --run {args.run} is not a chain run of experiment {experiment!r}; "
                     "`kdchain compare --all` lists them")
    chain_run_id, rows = tracker.generation_table(args.run)
    if args.json:
        print(json.dumps({"experiment": experiment, "chain_run_id": chain_run_id, "generations": rows}, indent=2))
    elif args.csv:
        _write_csv(rows, GENERATION_COLUMNS)
    else:
        progress.console.print(generation_table(rows, f"{experiment}: chain run {chain_run_id}"))
    return 0


def _chains_table(chains: list[dict], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("chain run", "started", "status", "gens", "final", "architecture", "params", "latency ms",
                "teacher acc", "final acc", "retention"):
        table.add_column(col, justify="left" if col in ("chain run", "started", "status", "final", "architecture")
                         else "right")
    for c in chains:
        table.add_row(c["chain_run_id"], c["started"], c["status"], str(c["generations"]), c["final"] or "-",
                      c["final_summary"] or "-", fmt_int(c["params"]),
                      "-" if c["latency_ms"] is None else f"{c['latency_ms']:.3f}", _pct(c["teacher_test_accuracy"]),
                      _pct(c["test_accuracy"]), "-" if c["retention"] is None else f"{c['retention']:.3f}")
    return table


# ---------------------------------------------------------------------------------------------- ui
