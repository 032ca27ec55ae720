"""The `kdchain` command line: its parser, `validate` and `inspect`, and the one place a known error becomes one
line and an exit code. The commands that run flows are flows/commands.py (run, retrain, schedule, server) and
flows/sweep_command.py; compare, ui, runs, clean and export have their own modules.

A user mistake (bad config, missing file, unusable store) prints one line per problem and exits 2; it never
shows a traceback and never writes to the store.
"""

import argparse
import importlib
import json
import os
import sys
import warnings
from pathlib import Path

# before prefect is imported: quiet its analytics and its server's logs. Flow and task runs log at INFO, so the
# Prefect UI's Logs tab shows our per-generation records; the terminal is kept quiet by quiet_console instead.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
# MLflow retries a failed request 7 times with backoff (about 4 minutes) after 120 s timeouts; a tracking server
# that goes away should end a run within a minute. The user's own values win.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
# third-party warnings must not precede our one-line messages (torch re-registering a kernel on import)
warnings.filterwarnings("ignore", message=r".*Overriding a previously registered kernel")

from rich.table import Table  # noqa: E402

from flows import progress, signals  # noqa: E402
from flows.command_helpers import fail, load_checked, machine_problems  # noqa: E402
from flows.compare import add_compare_args  # noqa: E402
from flows.housekeeping import add_workdir_args  # noqa: E402
from flows.tables import fmt_int  # noqa: E402
from flows.ui import add_ui_args  # noqa: E402
from kdchain.spec import SpecError  # noqa: E402

# ---------------------------------------------------------------------------------------------- commands


def cmd_validate(args) -> int:
    if args.schema:
        from kdchain.spec import ChainSpec

        print(json.dumps(ChainSpec.model_json_schema(), indent=2))
        return 0
    spec = load_checked(args)
    if args.schema_only:
        print("OK")
        return 0
    problems = machine_problems(spec, args)
    if problems:
        return fail(problems)
    print("OK: the config, the models' sizes, data and weights on disk, CUDA where asked for, the workdir and "
          "MLflow store writable, the tracking server answering (everything short of training)")
    from kdchain.data import data_notes

    for note in data_notes(spec.data):
        print(f"note: {args.config}: {note}")
    return 0


def cmd_inspect(args) -> int:
    from kdchain.checks import inspect_chain

    spec = load_checked(args)
    rows = inspect_chain(spec, with_nodes=args.nodes)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"{spec.name}: {spec.data.kind}", title_justify="left")
    for col in ("gen", "architecture", "params", "FLOPs", "feature maps"):
        table.add_column(col, justify="right" if col in ("params", "FLOPs") else "left")
    for r in rows:
        maps = ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in r["feature_maps"].items())
        table.add_row(r["name"], r["summary"], f"{r['params']:,}", fmt_int(r["flops"]), maps)
    progress.console.print(table)
    if args.nodes:
        for r in rows:
            progress.console.print(f"[bold]{r['name']}[/] nodes: " + " ".join(r["nodes"]))
    return 0


def lazy(module: str, name: str):
    """The command `name` of `module`, imported only when it runs (prefect and mlflow take seconds to import)."""
    def run(args) -> int:
        return getattr(importlib.import_module(module), name)(args)
    return run


# ---------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdchain", description="Chained knowledge distillation: "
                                     "teacher -> A -> B -> C, orchestrated by Prefect, tracked in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True)
    _config_commands(sub)
    _store_commands(sub)
    return parser


def _config_command(sub, name: str, help_: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_)
    p.add_argument("config", type=Path, help="chain YAML, e.g. configs/digits-chain.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a field, e.g. --set generations.A.train.epochs=3 (repeatable)")
    return p


def _config_commands(sub) -> None:
    """The commands that take a chain's config: run, validate, inspect, retrain, schedule."""
    p = _config_command(sub, "run", "train the chain")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the config's tracking.uri, then "
                                          "$MLFLOW_TRACKING_URI, then the project store)")
    p.add_argument("--fresh", nargs="?", const="teacher", metavar="GEN",
                   help="retrain GEN and every later generation (alone: all of them) in a new chain run, instead of "
                        "reusing finished ones")
    p.set_defaults(fn=lazy("flows.commands", "cmd_run"))

    p = _config_command(sub, "validate", "every check short of training (config, sizes, files, workdir, store, "
                                         "tracking server, CUDA); prints OK or one line per problem")
    p.add_argument("--schema", action="store_true", help="print the JSON schema of configs instead")
    p.add_argument("--schema-only", action="store_true", help="check the config and its models only (no files, "
                                                               "workdir, store or server)")
    p.set_defaults(fn=cmd_validate)

    p = _config_command(sub, "inspect", "per generation, without training: architecture, params, FLOPs, feature maps")
    p.add_argument("--json", action="store_true")
    p.add_argument("--nodes", action="store_true", help="list the tappable node names of each generation")
    p.set_defaults(fn=cmd_inspect)

    p = _config_command(sub, "retrain", "train the chain once more; the newcomer replaces the champion only if better")
    p.add_argument("--tracking-uri")
    p.add_argument("--force", action="store_true", help="retrain even when the data and config are the champion's")
    _retrain_modes(p)
    p.set_defaults(fn=lazy("flows.commands", "cmd_retrain"))

    p = _config_command(sub, "schedule", "serve the retrain flow as a Prefect deployment on a cron schedule "
                                         "(needs a server)")
    p.add_argument("--cron", required=True, help="cron expression, e.g. '0 3 * * 1' (Mondays 03:00)")
    p.add_argument("--name", help="deployment name (default <chain name>-retrain)")
    p.add_argument("--tracking-uri")
    p.add_argument("--force", action="store_true", help="every tick retrains, even on data the champion saw")
    _retrain_modes(p)
    p.set_defaults(fn=lazy("flows.commands", "cmd_schedule"))


def _retrain_modes(p: argparse.ArgumentParser) -> None:
    """--warm / --full: the config's `retrain.mode`, set on the command line (an override like --set)."""
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--warm", action="append_const", dest="set", const="retrain.mode=warm",
                       help="start every generation from the champion family's weights and train a share of its "
                            "epochs (retrain.mode: warm)")
    modes.add_argument("--full", action="append_const", dest="set", const="retrain.mode=full",
                       help="train every generation from the start (retrain.mode: full)")


def _store_commands(sub) -> None:
    """The commands around runs: the Prefect server, reading the store back, the workdir, sweeps, export, the UI."""
    p = sub.add_parser("server", help="keep a Prefect server running between runs (no start-up cost, a UI of every run)")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--port", type=int, default=4200, help="port on 127.0.0.1 (start; default 4200)")
    p.set_defaults(fn=lazy("flows.commands", "cmd_server"))

    p = sub.add_parser("compare", help="the generation table of the latest (or one, or every) chain run, from MLflow")
    add_compare_args(p)
    p.set_defaults(fn=lazy("flows.compare", "cmd_compare"))

    p = sub.add_parser("runs", help="the generation folders of a workdir: size, age, the chain runs using each")
    add_workdir_args(p)
    p.set_defaults(fn=lazy("flows.housekeeping", "cmd_runs"))

    p = sub.add_parser("clean", help="delete the generation folders no finished chain run or registered model uses")
    add_workdir_args(p)
    p.add_argument("--keep-last", type=int, metavar="N",
                   help="keep only what the N newest finished chain runs (per experiment) use")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    p.set_defaults(fn=lazy("flows.housekeeping", "cmd_clean"))

    from flows.sweep_command import add_sweep_args

    p = sub.add_parser("sweep", help="a grid of settings x seeds, each a chain run, at once on Dask or threads; "
                                     "test accuracy mean ± std per grid point and generation")
    add_sweep_args(p)
    p.set_defaults(fn=lazy("flows.sweep_command", "cmd_sweep"))

    from flows.export import add_export_args

    p = sub.add_parser("export", help="a chain run's generations as fp32 and int8 ONNX files with manifest.json")
    add_export_args(p)
    p.set_defaults(fn=lazy("flows.export", "cmd_export"))

    p = sub.add_parser("ui", help="the MLflow UI on the project's store, bound to 127.0.0.1; prints deep links")
    add_ui_args(p)
    p.set_defaults(fn=lazy("flows.ui", "cmd_ui"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "validate" and "--schema" in argv and not any(a.endswith((".yaml", ".yml")) for a in argv):
        argv = [*argv, "-"]  # `kdchain validate --schema` needs no config
    argv = [a if not (a == "--fresh" and i + 1 < len(argv) and argv[i + 1].endswith((".yaml", ".yml")))
            else "--fresh=teacher" for i, a in enumerate(argv)]  # `--fresh chain.yaml`: the flag, then the config
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt as e:  # before the chain started, or in a command without its own handling
        line, code = signals.line_and_code(e)
        return fail(line if args.command in ("run", "retrain", "sweep") else "kdchain: interrupted", code)
    except BrokenPipeError:  # `kdchain compare --json | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SpecError as e:
        return fail(e.lines)
    except Exception as e:  # known user-facing errors carry their own message
        from kdchain.checkpoints import CheckpointError
        from kdchain.distill import Diverged, StateUnreadable
        from kdchain.resources import ResourceError, resource_error
        from kdchain.tracking import CheckpointSourceError, StoreError, as_store_error, resolve_uri

        if isinstance(e, (CheckpointError, StoreError, ResourceError, CheckpointSourceError, StateUnreadable)):
            return fail(f"kdchain: {e}")
        if isinstance(e, Diverged):
            return fail(f"kdchain: training diverged: {e}", 1)
        from kdchain.distill import RankFailed
        from kdchain.models.prune import PlanMismatch
        from kdchain.qat import QatMismatch
        from kdchain.search import BudgetBroken

        if isinstance(e, (RankFailed, BudgetBroken, PlanMismatch, QatMismatch)):  # not the config's fault
            return fail(f"kdchain: {e}", 1)
        known = resource_error(e, "the model") or as_store_error(e, resolve_uri(getattr(args, "tracking_uri", None)))
        if known is not None:
            return fail(f"kdchain: {known}")
        raise


def entry() -> None:
    """The `kdchain` command (and `python -m flows.cli`); tests call main() and keep their process."""
    from flows.fastexit import exit_now

    exit_now(main())


if __name__ == "__main__":
    entry()
