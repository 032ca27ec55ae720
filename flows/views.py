"""`kdchain compare` and `kdchain ui`: reading a store back, on the terminal and in the MLflow UI.

Neither trains nor starts Prefect; both only read the MLflow store (through kdchain.tracking).
"""

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import webbrowser

from rich.table import Table

from flows import progress
from flows.tables import fmt_int, generation_table
from flows.command_helpers import fail



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
                      "latency_ms", "size_bytes", "retention", "teacher_agreement", *INT8_COLUMNS]
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


def add_ui_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri")
    p.add_argument("--experiment", help="the experiment to link to (default: that of the latest chain run)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--no-browser", action="store_true", help="print the links only; do not open a browser")


def browser_available() -> bool:
    """A browser that can show a page here: a desktop session (Linux) or macOS/Windows, and one that Python knows."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return True


def deep_links(uri: str, base: str, experiment: str | None = None) -> list[tuple[str, str]]:
    """[(what, url)], every one in MLflow's model-training workspace: the latest chain's generations listed flat
    (their names carry accuracy, params and latency), the chain run (its description: the generation table), MLflow's
    compare view of them, the experiment's runs and logged models, and the registered model."""
    from kdchain.tracking import latest_chain_experiment, open_tracker
    from kdchain.tracking.labels import (GENERATIONS_VIEW, REGISTERED_MODEL, RUNS_VIEW, VIEW_PARAM, VIEW_TAG,
                                         registry_url)

    experiment = experiment or latest_chain_experiment(uri)
    tracker = open_tracker(uri, experiment) if experiment else None
    if tracker is None:
        return []
    links = []
    runs = tracker.chain_runs()
    views = tracker.client.get_experiment(tracker.experiment_id).tags
    if runs:
        chain_id = runs[0].info.run_id
        _, rows = tracker.generation_table(chain_id)
        # MLflow's saved view of them (the figures as columns; filter and sort inside it: URL facets would
        # override the view), else (a chain that did not finish, a store from before views) the filtered runs page
        saved = views.get(VIEW_TAG + GENERATIONS_VIEW, "")
        links.append(("its generations", tracker.experiment_url(base, query=f"{VIEW_PARAM}={GENERATIONS_VIEW}")
                      if chain_id in saved else generations_url(tracker.experiment_url(base), chain_id)))
        links.append(("latest chain run", tracker.run_url(chain_id, base)))
        if rows:
            links.append(("compare them", compare_url(base, tracker.experiment_id, [r["run_id"] for r in rows])))
    links.append(("experiment runs", tracker.experiment_url(
        base, query=f"{VIEW_PARAM}={RUNS_VIEW}" if VIEW_TAG + RUNS_VIEW in views else "")))
    links.append(("logged models", tracker.experiment_url(base, tab="models")))
    registered = runs[0].data.tags.get(REGISTERED_MODEL) if runs else None
    links.append(("model registry", registry_url(base, registered)))
    return links


def generations_url(runs_page: str, chain_run_id: str) -> str:
    """The runs page filtered to one chain's generations, best test accuracy first: sorted by a metric, MLflow
    lists them flat instead of folded under the chain run."""
    from urllib.parse import quote

    search = f"tags.mlflow.parentRunId = '{chain_run_id}'"
    joiner = "&" if "?" in runs_page else "?"
    return (f"{runs_page}{joiner}searchFilter={quote(search)}&orderByKey={quote('metrics.`test_accuracy`')}"
            "&orderByAsc=false")


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's compare view (what select runs -> Compare opens): params and metrics of the runs side by side."""
    from urllib.parse import quote

    from kdchain.tracking.labels import WORKSPACE

    return (f"{base}/#/compare-runs?runs={quote(json.dumps(run_ids))}&experiments={quote(json.dumps([experiment_id]))}"
            f"&{WORKSPACE}")


def _wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 60.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    return False


def port_in_use(port: int) -> str | None:
    """Why 127.0.0.1:port cannot be served on (the OS's words), or None when it is free."""
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no owner
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as e:
            return e.strerror or str(e)
    return None


def cmd_ui(args) -> int:
    from kdchain.tracking import resolve_uri, sqlite_path, tracking_problem

    busy = port_in_use(args.port)
    if busy:  # else MLflow's server would log "address already in use" after our links to someone else's server
        return fail(f"kdchain ui: port {args.port} on 127.0.0.1 is already in use ({busy}); stop what listens "
                     f"there (another `kdchain ui`?) or pass --port")
    uri = resolve_uri(args.tracking_uri)
    unusable = tracking_problem(uri)
    if unusable:
        return fail(f"kdchain ui: {unusable}")
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        return fail(f"kdchain ui: no MLflow store at {db}; run `kdchain run CONFIG` first or pass --tracking-uri")
    base = f"http://127.0.0.1:{args.port}"
    links = deep_links(uri, base, args.experiment)
    print(f"kdchain ui: starting the MLflow UI on {base} (store {uri}) ...", flush=True)
    # one worker: a local viewer, on a machine that may be training at the same time
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(args.port), "--workers", "1"]
    proc = subprocess.Popen(cmd)
    # a `kill` of this command stops the server with it
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:  # the links only once the server answers: a click on them must not meet "connection refused"
        if not _wait_healthy(base, proc, timeout=180.0):
            if proc.poll() is None:
                proc.terminate()
            return fail(f"kdchain ui: the MLflow server on {base} did not start (port in use? see its log above)")
    except KeyboardInterrupt:
        proc.terminate()
        return 0
    print(f"MLflow UI on {base}; Ctrl-C stops it", flush=True)
    for what, url in links:
        print(f"  {what + ':':18} {url}", flush=True)
    if not links:
        print("  (no kdchain chain runs in this store yet)", flush=True)
    if links and not args.no_browser and browser_available():
        webbrowser.open(links[0][1])  # the latest chain's generations, or the experiment's runs
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
