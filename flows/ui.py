"""`kdchain ui`: the MLflow UI on the project's store, bound to 127.0.0.1, and the deep links a person clicks
first (the runs page, the latest chain run, its generations side by side); it neither trains nor starts Prefect."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import webbrowser

from flows.command_helpers import fail


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
