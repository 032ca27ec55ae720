"""`kdchain server start --port N` keeps a real Prefect server for later runs: `kdchain run` uses it (no temporary
server, the run visible in its API and UI under the chain's name, with our per-generation log records), its UI on
port N talks to port N, and `kdchain server stop` stops it."""

import os
import subprocess
import sys

import httpx
import pytest

from scripts.headless import Chromium, chromium_path
from tests.conftest import ROOT, free_port, tiny_chain, write_config

# about 45 s: `kdchain server start` on a free port, a run on it, the UI in Chromium; `make test-all`
pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """A server started by `kdchain server start` on a free port (never 4200), one `kdchain run` on it; stopped at
    the end, and checked stopped."""
    tmp = tmp_path_factory.mktemp("kept")
    port = free_port()
    while port == 4200:
        port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_LOGGING_LEVEL")}
    env |= {"PREFECT_HOME": str(tmp / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cli = [sys.executable, "-m", "flows.cli"]

    def kdchain(*args, timeout=300):
        return subprocess.run([*cli, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

    cfg = tiny_chain(tmp, name="kept")
    cfg["generations"] = cfg["generations"][:1]
    config = write_config(tmp, cfg)
    try:
        started = kdchain("server", "start", "--port", str(port))
        assert started.returncode == 0, started.stderr
        assert f"http://127.0.0.1:{port}" in started.stdout
        assert f"127.0.0.1:{port}" in kdchain("server", "status").stdout
        run = kdchain("run", str(config))
        assert run.returncode == 0, run.stdout + run.stderr
        yield api, run
    finally:
        stopped = kdchain("server", "stop", timeout=60)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    try:
        httpx.get(f"{api}/health", timeout=2)
        alive = True
    except httpx.HTTPError:
        alive = False
    assert not alive, "kdchain server stop stopped it"
    assert "no Prefect server kept" in kdchain("server", "status").stdout


def test_kept_server_serves_later_runs_under_the_chain_name(kept):
    api, run = kept
    assert "temporary server" not in run.stdout
    flow_runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
    assert [(r["name"], r["state_type"]) for r in flow_runs] == [("kept · seed 0", "COMPLETED")], \
        "the run went to the kept server, named after the chain"
    assert f"Prefect flow run: {api.removesuffix('/api')}/runs/flow-run/{flow_runs[0]['id']}" in run.stdout
    tasks = httpx.post(f"{api}/task_runs/filter", json={}, timeout=10).json()
    assert {"teacher", "A"} <= {t["name"] for t in tasks}
    # our one record per generation reaches the Prefect API at INFO; the terminal shows no Prefect INFO line
    logs = [entry["message"] for entry in httpx.post(f"{api}/logs/filter", json={}, timeout=10).json()]
    assert any(m.startswith("teacher: ") and "% · " in m and "params" in m for m in logs), logs
    assert any(m.startswith("A: ") for m in logs), logs
    assert "Beginning flow run" not in run.stdout + run.stderr and "teacher: " not in run.stdout


@pytest.mark.skipif(chromium_path() is None, reason="needs Debian's chromium (apt-get install chromium) to load the UI")
def test_the_ui_on_port_n_shows_the_chain_and_its_log_records(kept):
    """The Prefect UI served on port N calls the API on port N (not 4200): the flow-run link `kdchain run` printed
    shows the chain's name and the per-generation records in its Logs tab, without a click."""
    api, run = kept
    link = next(line.split()[-1] for line in run.stdout.splitlines() if line.startswith("Prefect flow run: "))
    with Chromium(1600, 1000) as page:
        page.goto(link)
        shown = page.wait_for(["kept · seed 0", "teacher: ", "A: "], timeout=90)
    assert "Can't connect" not in shown
    assert "kept · seed 0" in shown and "teacher: " in shown and "A: " in shown, shown[:2000]
