"""Acceptance: `kdchain schedule` against a real `prefect server start`; a scheduled retrain promotes, a worse
one becomes challenger, and `models:/<name>@champion` always loads the best model seen so far.

Slow by nature (a Prefect server, two served retrains, a cron minute): about 2-3 minutes on a busy 2-core box.
"""

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from tests.conftest import ROOT, free_port, tiny_chain, write_config

# about 2 minutes: a real `prefect server start` and a cron schedule that fires twice; `make test-all`
pytestmark = pytest.mark.slow


NAME = "sched"
MODEL = f"{NAME}-student"
DEPLOYMENT = "sched-retrain"


def _start(cmd: list[str], env: dict, log) -> subprocess.Popen:
    # a session of its own: stopping it stops the flow-run processes it spawned too
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # children the group signal may have missed after the leader exited
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait(predicate, timeout: float, what: str, procs: list[subprocess.Popen], logs: list) -> object:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"{p.args[:4]} exited with {p.returncode} while waiting for {what}:\n" + _tails(logs))
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n" + _tails(logs))


def _tails(logs) -> str:
    return "\n".join(f"--- {f.name}\n" + open(f.name).read()[-3000:] for f in logs)


def _runs(api: httpx.Client, deployment_id: str) -> list[dict]:
    body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "sort": "EXPECTED_START_TIME_ASC"}
    return api.post("/flow_runs/filter", json=body).json()


def _deployment_id(api: httpx.Client) -> str | None:
    r = api.get(f"/deployments/name/retrain/{DEPLOYMENT}")
    return r.json()["id"] if r.status_code == 200 else None


def _finished(api, deployment_id, exclude=()):
    runs = [r for r in _runs(api, deployment_id) if r["id"] not in exclude and r["state_type"] in
            ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")]
    return runs[0] if runs else None


def test_scheduled_retrain_promotes_better_and_keeps_champion_against_worse(tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from kdchain.data import load_data
    from kdchain.distill import evaluate
    from kdchain.spec import load_spec

    cfg = tiny_chain(tmp_path, name=NAME, epochs=4)
    cfg["generations"][0]["train"]["lr"] = 0.01  # A (8-16 channels) learns digits well within 4 epochs
    cfg["generations"] = cfg["generations"][:1]  # teacher -> A: enough to show promotion
    config = write_config(tmp_path, cfg)
    store = cfg["tracking"]["uri"]
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_RUNNER_POLL_FREQUENCY": "2",
           "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
           "MLFLOW_TRACKING_URI": store}
    procs, logs = [], []

    def start(name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "w")
        logs.append(log)
        procs.append(_start(cmd, env, log))
        return procs[-1]

    try:
        start("server", [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                         "--port", str(port)])
        api = httpx.Client(base_url=env["PREFECT_API_URL"], timeout=10)

        def healthy():
            try:
                return api.get("/health").status_code == 200
            except httpx.HTTPError:
                return False

        _wait(healthy, 90, "the Prefect server", procs, logs)

        # 1. a schedule that fires once, at the next minute that leaves the deployment time to register
        fire = (datetime.now(timezone.utc) + timedelta(seconds=25)).replace(second=0, microsecond=0) \
            + timedelta(minutes=1)
        cron = f"{fire.minute} {fire.hour} * * *"
        serve1 = start("serve1", [sys.executable, "-m", "flows.cli", "schedule", str(config), "--cron", cron,
                                  "--name", DEPLOYMENT])
        deployment_id = _wait(lambda: _deployment_id(api), 150, "the deployment", procs, logs)
        dep = api.get(f"/deployments/{deployment_id}").json()
        assert [s["schedule"]["cron"] for s in dep["schedules"]] == [cron]
        first = _wait(lambda: _finished(api, deployment_id), 200, "the scheduled run", procs, logs)
        assert first["state_type"] == "COMPLETED", _tails(logs)
        assert first["auto_scheduled"], "the run was created by the schedule, not by hand"

        client = MlflowClient(store)
        champion = client.get_model_version_by_alias(MODEL, "champion")
        assert str(champion.version) == "1"
        chain_run = client.search_runs([client.get_experiment_by_name(NAME).experiment_id],
                                       "tags.`kdchain.kind` = 'chain'")[0]
        assert chain_run.data.tags["kdchain.promotion.outcome"] == "promoted"
        assert chain_run.data.tags["kdchain.promotion.champion_version"] == "none"
        _stop(serve1)
        procs.remove(serve1)  # stopped on purpose: no longer watched

        # 2. the same deployment, now with a much smaller, barely trained student, run once by hand
        worse = ["generations.A.student.derive.width=0.125", "generations.A.train.epochs=1", "teacher.train.epochs=1"]
        start("serve2", [sys.executable, "-m", "flows.cli", "schedule", str(config), "--cron", "0 0 1 1 *",
                         "--name", DEPLOYMENT, *sum((["--set", s] for s in worse), [])])
        _wait(lambda: api.get(f"/deployments/{deployment_id}").json()["parameters"].get("overrides") == worse
              and not api.get(f"/deployments/{deployment_id}").json()["paused"], 150, "the updated deployment",
              procs, logs)
        api.post(f"/deployments/{deployment_id}/create_flow_run", json={}).raise_for_status()
        second = _wait(lambda: _finished(api, deployment_id, exclude={first["id"]}), 200, "the second run",
                       procs, logs)
        assert second["state_type"] == "COMPLETED", _tails(logs)

        assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
        assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == "2"
        runs = client.search_runs([chain_run.info.experiment_id], "tags.`kdchain.kind` = 'chain'",
                                  order_by=["attributes.start_time DESC"])
        tags = runs[0].data.tags
        assert tags["kdchain.promotion.outcome"] == "challenger"
        assert tags["kdchain.promotion.champion_version"] == "1"
        new_acc, champ_acc = float(tags["kdchain.promotion.new_test_accuracy"]), \
            float(tags["kdchain.promotion.champion_test_accuracy"])
        assert new_acc < champ_acc, "the smaller, barely trained student is honestly worse"
        assert "below the required" in tags["kdchain.promotion.reason"]
        md = client.download_artifacts(runs[0].info.run_id, "promotion.md", str(tmp_path))
        assert "**Outcome: challenger**" in open(md).read()
        artifacts = api.post("/artifacts/filter", json={"artifacts": {"key": {"any_": [f"{MODEL}-promotion"]}}}).json()
        assert {a["type"] for a in artifacts} == {"markdown"} and len(artifacts) == 2

        # 3. what a deployment would load is the best model seen: version 1, scored again on the test split
        mlflow.set_tracking_uri(store)
        model = mlflow.pytorch.load_model(f"models:/{MODEL}@champion")
        data = load_data(load_spec(config).data, 0)
        assert evaluate(model, data.test) == pytest.approx(champ_acc, abs=1e-6)
        assert champ_acc > 0.5, "four epochs on digits learn well beyond chance (0.1)"
    finally:
        for p in reversed(procs):
            _stop(p)
        for log in logs:
            log.close()
