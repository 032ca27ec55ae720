"""docs/retraining.md's work-pool procedure, run as written: the commands of its marked block, in order, with a free port for 4200
and a one-generation chain passed to the triggered run (`-p config=...`, as the page says). A real Prefect server,
a process work pool, `prefect deploy` of prefect.yaml, a process worker, a retrain that completes and is recorded."""

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, free_port, tiny_chain, write_config

# about 80 s: a server, a work pool, a worker and a deployment, as docs/retraining.md's procedure; `make test-all`
pytestmark = pytest.mark.slow


MARKER = "<!-- work-pool procedure: tests/test_workpool.py runs this block -->"


def readme_procedure() -> list[str]:
    text = (ROOT / "docs" / "retraining.md").read_text()
    block = text.split(MARKER, 1)[1].split("```bash", 1)[1].split("\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].rstrip() for line in block.splitlines() if line.strip()]


def test_readme_work_pool_procedure_runs_a_retrain(tmp_path):
    port = free_port()
    cfg = tiny_chain(tmp_path, name="pooled")
    cfg["generations"] = cfg["generations"][:1]
    config = write_config(tmp_path, cfg)
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_LOGGING_LEVEL")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "2", "PWD": str(ROOT)}
    python = sys.executable
    worker = None
    lines = readme_procedure()
    assert lines[0].startswith("kdchain server start") and any(line.startswith("prefect worker start") for line in lines)
    try:
        for line in lines:
            line = line.replace("4200", str(port))
            line = re.sub(r"^kdchain ", f"{python} -m flows.cli ", line)
            line = re.sub(r"^prefect ", f"{python} -m prefect ", line)
            if line.startswith("export "):
                key, value = line.removeprefix("export ").split("=", 1)
                env[key] = os.path.expandvars(value.replace("$PWD", str(ROOT)))
            elif line.endswith("&"):
                log = open(tmp_path / "worker.log", "w")
                worker = subprocess.Popen(line.rstrip("& "), shell=True, cwd=ROOT, env=env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
            else:
                if " deployment run " in line:
                    line += f" -p config={config}"
                done = subprocess.run(line, shell=True, cwd=ROOT, env=env, capture_output=True, text=True,
                                      timeout=300)
                assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        assert env["PREFECT_API_URL"] == f"http://127.0.0.1:{port}/api"
        api = httpx.Client(base_url=env["PREFECT_API_URL"], timeout=10)
        deadline, runs = time.time() + 300, []
        while time.time() < deadline:
            runs = api.post("/flow_runs/filter", json={"flow_runs": {"deployment_id": {"is_null_": False}}}).json()
            if runs and runs[0]["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(2)
        assert runs and runs[0]["state_type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-3000:]
        # the retrain ran the chain as a subflow: its per-generation records are in the Prefect logs. They reach the
        # server's database after the flow run's state (the client and the server both batch them): wait for them.
        def generation_records() -> list[str]:
            logs, offset = [], 0  # every page: the API answers at most 200 records a call
            while True:
                page = api.post("/logs/filter", json={"offset": offset, "limit": 200, "sort": "TIMESTAMP_ASC"}).json()
                logs += [entry["message"] for entry in page]
                if len(page) < 200:
                    return logs
                offset += 200

        deadline = time.time() + 60
        while True:
            logs = generation_records()
            found = any(m.startswith("teacher: ") for m in logs) and any(m.startswith("A: ") for m in logs)
            if found or time.time() > deadline:
                break
            time.sleep(2)
        assert found, logs
        chains = MlflowClient(cfg["tracking"]["uri"]).search_runs(
            [MlflowClient(cfg["tracking"]["uri"]).get_experiment_by_name("pooled").experiment_id],
            "tags.`kdchain.kind` = 'chain'")
        assert [" · retrain · " in r.info.run_name for r in chains] == [True]
        # the promotion record names the test split both models were scored on, as the generation runs logged it
        client = MlflowClient(cfg["tracking"]["uri"])
        gen = client.search_runs([chains[0].info.experiment_id],
                                 f"tags.`mlflow.parentRunId` = '{chains[0].info.run_id}'")[0]
        logged = [f"{i.dataset.name}@{i.dataset.digest}" for i in gen.inputs.dataset_inputs
                  if any(t.key == "mlflow.data.context" and t.value == "test" for t in i.tags)]
        assert [chains[0].data.tags["kdchain.promotion.test_data"]] == logged and logged[0].startswith("digits/test@")
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(30)
        subprocess.run([python, "-m", "flows.cli", "server", "stop"], cwd=ROOT, env=env, capture_output=True,
                       timeout=60)
