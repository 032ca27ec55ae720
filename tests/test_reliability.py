"""Reliability: kill -9 mid-generation then resume, divergence, corrupt checkpoints, concurrent chains, resources.

The subprocess tests run `python -m flows.cli run` for real. They talk to the session's Prefect test server
(PREFECT_API_URL) instead of each starting a temporary one: the same real server, 10-15 s cheaper per process.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from flows.cli import main
from kdchain.data import load_data
from kdchain.engine import fit, load_train_state
from kdchain.losses import DistillLoss
from kdchain.models import build_model
from kdchain.specs import CeLoss, CnnArch, DigitsData, TrainSpec
from kdchain.tracking import GENERATION, KIND, SUPERSEDED
from tests.conftest import ROOT, tiny_chain, write_config


@pytest.fixture
def cli_env(prefect_harness, tmp_path):
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_HOME=str(tmp_path / "prefect-home"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def cli(args: list[str], env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def store(cfg: dict) -> MlflowClient:
    return MlflowClient(cfg["tracking"]["uri"])


def runs_of(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def gen_runs(runs, status=None) -> list:
    return [r for r in runs if r.data.tags.get(KIND) == "generation" and (status is None or r.info.status == status)]


def epoch_steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "train_loss"))


# ---------------------------------------------------------------------------------------------- kill -9, corrupt


def test_kill_9_mid_generation_resumes_the_same_run_and_a_corrupt_checkpoint_is_retrained(tmp_path, cli_env):
    cfg = tiny_chain(tmp_path, name="killme", epochs=1)
    cfg["generations"][1]["train"]["epochs"] = 4
    path = write_config(tmp_path, cfg)

    # 1. killed with SIGKILL once B has logged its second epoch (lines are printed per epoch off a terminal)
    proc = cli(["run", str(path)], cli_env)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if re.match(r"\s*B epoch 2/4", line):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen) + proc.stderr.read()
    b_dir = next((tmp_path / "work" / "killme").glob("2-B-*"))
    killed_run = (b_dir / "run_id").read_text().strip()
    done = load_train_state(b_dir / "train_state.pt")["epoch"]
    assert 2 <= done < 4
    client = store(cfg)
    assert client.get_run(killed_run).info.status == "RUNNING"  # what a kill leaves behind

    # 2. the same command again: teacher and A reused, B continues after its last finished epoch, in the same run
    code, out, err = finish(cli(["run", str(path)], cli_env))
    assert code == 0, out + err
    assert "Traceback" not in out + err
    assert re.search(r"teacher already trained in an earlier run: reused", out), out
    assert re.search(r"A already trained in an earlier run: reused", out), out
    assert f"B: resuming after epoch {done}/4 (MLflow run {killed_run[:8]} continued)" in out, out
    trained_again = [int(m) for m in re.findall(r"B epoch (\d)/4", out)]
    assert trained_again == list(range(done + 1, 5)), out  # the finished epochs were not repeated
    assert not re.search(r"(teacher|A) epoch", out)

    runs = runs_of(client, "killme")
    chains = [r for r in runs if r.data.tags.get(KIND) == "chain"]
    assert len(chains) == 1 and chains[0].info.status == "FINISHED"
    finished = gen_runs(runs, "FINISHED")
    assert sorted(int(r.data.tags[GENERATION]) for r in finished) == [0, 1, 2, 3]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    b_run = next(r for r in finished if r.data.tags[GENERATION] == "2")
    assert b_run.info.run_id == killed_run
    assert epoch_steps(client, killed_run) == [1, 2, 3, 4]  # every epoch logged exactly once
    assert not (b_dir / "train_state.pt").exists()

    # 3. A's checkpoint truncated: one line says so, A is retrained, and A still appears once as finished
    a_dir = next((tmp_path / "work" / "killme").glob("1-A-*"))
    ckpt = a_dir / "model.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    old_a = next(r for r in finished if r.data.tags[GENERATION] == "1").info.run_id
    code, out, err = finish(cli(["run", str(path)], cli_env))
    assert code == 0, out + err
    notes = [line for line in out.splitlines() if "cannot be used" in line]
    assert len(notes) == 1 and notes[0].startswith(f"A: checkpoint {ckpt} cannot be used"), out
    assert "retraining A" in notes[0]
    assert re.search(r"A epoch 1/1", out) and "teacher already trained" in out
    runs = runs_of(client, "killme")
    counted = [r for r in gen_runs(runs, "FINISHED") if SUPERSEDED not in r.data.tags]
    indices = sorted(int(r.data.tags[GENERATION]) for r in counted)
    assert indices == [0, 1, 2, 3], indices
    assert client.get_run(old_a).data.tags[SUPERSEDED] != old_a
    assert len([r for r in runs if r.data.tags.get(KIND) == "chain"]) == 1

    # `kdchain compare` reads back the new A, once
    code, out, err = finish(cli(["compare", "--tracking-uri", cfg["tracking"]["uri"], "--json"], cli_env))
    assert code == 0, err
    import json

    rows = json.loads(out)["generations"]
    assert [r["name"] for r in rows] == ["teacher", "A", "B", "C"]
    assert rows[1]["run_id"] != old_a


# ---------------------------------------------------------------------------------------------- divergence


def test_a_nan_loss_stops_the_chain_and_registers_nothing(tmp_path, cli_env):
    cfg = tiny_chain(tmp_path, name="diverge", epochs=1)
    # a learning rate this high overflows the weights within the first epoch
    cfg["generations"][0]["train"]["lr"] = 1e30
    path = write_config(tmp_path, cfg)
    code, out, err = finish(cli(["run", str(path)], cli_env))
    assert code == 1, out + err
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.match(r"kdchain: training diverged: generation A: loss became (nan|inf) in epoch 1 \(term: \w+", lines[0])
    client = store(cfg)
    runs = runs_of(client, "diverge")
    chain = next(r for r in runs if r.data.tags.get(KIND) == "chain")
    assert chain.info.status == "FAILED"
    by_index = {r.data.tags[GENERATION]: r for r in gen_runs(runs)}
    assert set(by_index) == {"0", "1"}  # B and C never started
    assert by_index["1"].info.status == "FAILED" and "epoch 1" in by_index["1"].data.tags["kdchain.error"]
    assert client.search_model_versions("name = 'diverge-student'") == []
