"""`kdchain server start` keeps a real Prefect server for later runs: `kdchain run` uses it (no temporary server,
the run visible in its API and UI), and `kdchain server stop` stops it."""

import os
import subprocess
import sys

import httpx

from tests.conftest import ROOT, free_port, tiny_chain, write_config


def test_kept_server_serves_later_runs_and_stops(tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cli = [sys.executable, "-m", "flows.cli"]

    def kdchain(*args, timeout=300):
        return subprocess.run([*cli, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

    cfg = tiny_chain(tmp_path, name="kept")
    cfg["generations"] = cfg["generations"][:1]
    config = write_config(tmp_path, cfg)
    try:
        started = kdchain("server", "start", "--port", str(port))
        assert started.returncode == 0, started.stderr
        assert f"http://127.0.0.1:{port}" in started.stdout
        assert f"127.0.0.1:{port}" in kdchain("server", "status").stdout

        run = kdchain("run", str(config))
        assert run.returncode == 0, run.stdout + run.stderr
        assert "temporary server" not in run.stdout
        flow_runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
        assert [r["state_type"] for r in flow_runs] == ["COMPLETED"], "the run went to the kept server"
        tasks = httpx.post(f"{api}/task_runs/filter", json={}, timeout=10).json()
        assert {"teacher", "A"} <= {t["name"] for t in tasks}
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
