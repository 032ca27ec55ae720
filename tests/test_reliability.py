"""Reliability: kill -9 mid-generation then resume, divergence, corrupt checkpoints, concurrent chains, resources.

The subprocess tests run `python -m flows.cli run` for real. They talk to the session's Prefect test server
(PREFECT_API_URL) instead of each starting a temporary one: the same real server, 10-15 s cheaper per process.
"""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from mlflow import MlflowClient

from flows.cli import main
from kdchain.data import load_data
from kdchain.data.sources.digits import DigitsData
from kdchain.distill import fit, load_train_state
from kdchain.distill.losses import DistillLoss
from kdchain.losses.ce import CeLoss
from kdchain.models import build_model
from kdchain.models.families.cnn import CnnArch
from kdchain.spec import TrainSpec
from kdchain.tracking import GENERATION, KIND, SUPERSEDED, TEACHER_RUN
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


def test_kill_9_mid_generation_resumes_the_same_run_and_a_corrupt_checkpoint_is_retrained(tmp_path, cli_env, capfd):
    """The killed run is a `kdchain run` process; the reruns run in this process (the same command, without its
    seconds of imports)."""
    cfg = tiny_chain(tmp_path, name="killme", epochs=1)
    cfg["generations"][1]["train"]["epochs"] = 4
    # one thread: A retrained after its checkpoint is lost (step 3) gets the same weights, so B is reused
    cfg["generations"][0]["train"]["threads"] = 1
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
    capfd.readouterr()
    assert main(["run", str(path)]) == 0
    out, err = capfd.readouterr()
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
    assert main(["run", str(path)]) == 0
    out, err = capfd.readouterr()
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
    # B, reused (A's new weights are its old ones), names the run whose weights taught it: the new A's
    assert "B already trained in an earlier run: reused" in out, out
    new_a = next(r for r in counted if r.data.tags[GENERATION] == "1").info.run_id
    b_now = next(r for r in counted if r.data.tags[GENERATION] == "2")
    assert new_a != old_a and b_now.data.tags[TEACHER_RUN] == new_a

    # `kdchain compare` reads back the new A, once
    assert main(["compare", "--tracking-uri", cfg["tracking"]["uri"], "--json"]) == 0
    rows = json.loads(capfd.readouterr().out)["generations"]
    assert [r["name"] for r in rows] == ["teacher", "A", "B", "C"]
    assert rows[1]["run_id"] != old_a


@pytest.mark.slow  # about 40 s: two `kdchain run` processes, one killed
def test_a_resume_state_that_no_longer_fits_trains_again_in_a_new_run(tmp_path, cli_env):
    cfg = tiny_chain(tmp_path, name="refit", epochs=1)
    cfg["generations"] = cfg["generations"][:1]
    cfg["generations"][0]["train"]["epochs"] = 2
    path = write_config(tmp_path, cfg)
    code, out, err = finish(cli(["run", str(path)], dict(cli_env, KDCHAIN_TEST_KILL_AT="A:saved")))
    assert code == -signal.SIGKILL, out + err
    a_dir = next((tmp_path / "work" / "refit").glob("1-A-*"))
    killed_run = (a_dir / "run_id").read_text().strip()
    state = torch.load(a_dir / "train_state.pt", weights_only=True)
    state["student"]["frozen_sums"] = torch.ones(1, dtype=torch.float64)  # as if saved beside other frozen weights
    torch.save(state, a_dir / "train_state.pt")

    code, out, err = finish(cli(["run", str(path)], cli_env))
    assert code == 0, out + err
    assert ("A: the resume state after epoch 2 does not fit the model any more; training A from epoch 1 in a new "
            "MLflow run") in out, out
    client = store(cfg)
    assert client.get_run(killed_run).info.status == "KILLED"
    a_run = next(r for r in gen_runs(runs_of(client, "refit"), "FINISHED") if r.data.tags[GENERATION] == "1")
    assert a_run.info.run_id != killed_run
    assert epoch_steps(client, a_run.info.run_id) == [1, 2]  # each epoch once, in the run that trained it


# ---------------------------------------------------------------------------------------------- divergence


def test_a_nan_loss_stops_the_chain_and_registers_nothing(tmp_path, prefect_harness, capfd):
    cfg = tiny_chain(tmp_path, name="diverge", epochs=1)
    # a learning rate this high overflows the weights within the first epoch
    cfg["generations"][0]["train"]["lr"] = 1e30
    path = write_config(tmp_path, cfg)
    code = main(["run", str(path)])
    out, err = capfd.readouterr()
    assert code == 1, out + err
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.match(r"kdchain: training diverged: generation A \(generations.0\): loss became (nan|inf) in epoch 1 \(term: \w+", lines[0])
    client = store(cfg)
    runs = runs_of(client, "diverge")
    chain = next(r for r in runs if r.data.tags.get(KIND) == "chain")
    assert chain.info.status == "FAILED"
    by_index = {r.data.tags[GENERATION]: r for r in gen_runs(runs)}
    assert set(by_index) == {"0", "1"}  # B and C never started
    assert by_index["1"].info.status == "FAILED" and "epoch 1" in by_index["1"].data.tags["kdchain.error"]
    assert client.search_model_versions("name = 'diverge-student'") == []


# ---------------------------------------------------------------------------------------------- concurrency


@pytest.mark.slow  # about 30 s: two `kdchain run` processes at once
def test_two_chains_started_together_on_one_fresh_store_both_finish_intact(tmp_path, cli_env):
    uri = f"sqlite:///{tmp_path / 'shared-store' / 'mlflow.db'}"
    procs = {}
    for name in ("left", "right"):
        (tmp_path / name).mkdir()
        cfg = tiny_chain(tmp_path / name, name=name, epochs=2, tracking={"uri": uri})
        procs[name] = cli(["run", str(write_config(tmp_path / name, cfg))], cli_env)
    for name, proc in procs.items():
        code, out, err = finish(proc)
        assert code == 0 and "Traceback" not in err, f"{name}:\n{out}\n{err}"
    client = MlflowClient(uri)
    for name in procs:
        runs = runs_of(client, name)
        assert [r.info.status for r in runs if r.data.tags.get(KIND) == "chain"] == ["FINISHED"]
        gens = gen_runs(runs)
        assert len(gens) == 4 and {r.info.status for r in gens} == {"FINISHED"}
        for r in gens:  # no lost metric: both epochs and every final number of every generation
            assert epoch_steps(client, r.info.run_id) == [1, 2]
            assert {"test_accuracy", "params", "latency_ms", "retention"} <= set(r.data.metrics)
        assert [str(v.version) for v in client.search_model_versions(f"name = '{name}-student'")] == ["1"]


# ---------------------------------------------------------------------------------------------- resources


def test_the_command_keeps_its_exit_code_and_its_output_through_the_fast_exit(tmp_path):
    """`kdchain` leaves with os._exit after flushing: piped (block-buffered) output must still arrive, and the
    exit code must be main()'s."""
    ok = subprocess.run([sys.executable, "-m", "flows.cli", "validate", str(ROOT / "configs" / "digits-chain.yaml")],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (ok.returncode, ok.stdout.split(":")[0]) == (0, "OK"), ok.stderr
    missing = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(tmp_path / "nope.yaml")], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert "nope.yaml: no such config file" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_store_that_cannot_be_written_exits_2_saying_what_to_change(tmp_path, capfd):
    (tmp_path / "blocker").write_text("a file where the store's folder should be")
    cfg = tiny_chain(tmp_path, tracking={"uri": f"sqlite:///{tmp_path / 'blocker' / 'store' / 'mlflow.db'}"})
    assert main(["run", str(write_config(tmp_path, cfg))]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write the MLflow store" in err[0] and "--tracking-uri" in err[0], err
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("options, reason", [("ro", "readonly database|Read-only file system"),
                                             ("size=24k", "database or disk is full")])
def test_a_read_only_or_full_store_disk_exits_2(tmp_path, capfd, options, reason):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("needs permission to mount a small tmpfs")
    try:
        cfg = tiny_chain(tmp_path, tracking={"uri": f"sqlite:///{mnt / 'mlflow.db'}"})
        assert main(["run", str(write_config(tmp_path, cfg))]) == 2
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)  # lazy: MLflow keeps the file open
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(reason, err[0]) and "free space there" in err[0], err


def test_a_model_too_big_for_memory_exits_2_naming_what_to_lower(tmp_path, capfd):
    # 200,000 x 200,000 3x3 filters: 1.4 TB of weights; refused from its size before anything starts, and no
    # smaller batch is suggested (the weights alone do not fit; the students derived from it are not named again)
    cfg = tiny_chain(tmp_path, name="huge", epochs=1)
    cfg["teacher"]["model"]["channels"] = [200_000, 200_000]
    assert main(["run", str(write_config(tmp_path, cfg))]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "teacher.model: 360.0 G parameters need 5.8 TB of memory to train" in err[0] and "channels" in err[0]
    assert "batch_size" not in err[0] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "store").exists() and not (tmp_path / "work").exists()


# ---------------------------------------------------------------------------------------------- exact resume


def test_resume_after_an_interruption_gives_the_weights_of_an_uninterrupted_fit(tmp_path):
    data = load_data(DigitsData(), 0)
    train = TrainSpec(epochs=3, batch_size=128, threads=1)
    arch = CnnArch(channels=[4, 8])

    def fresh():
        torch.manual_seed(0)
        return build_model(arch, 10, 1), DistillLoss([CeLoss()])

    model, loss = fresh()
    fit(model, None, loss, data, train, seed=0)

    class Stop(Exception):
        pass

    def die_after_2(report):
        if report.epoch == 2:
            raise Stop

    state = tmp_path / "state.pt"
    m1, l1 = fresh()
    with pytest.raises(Stop):
        fit(m1, None, l1, data, train, seed=0, on_epoch=die_after_2, state_path=state)
    m2, l2 = fresh()
    result = fit(m2, None, l2, data, train, seed=0, state_path=state)
    assert result.resumed_from_epoch == 2 and [r.epoch for r in result.history] == [3]
    assert [r.epoch for r in result.restored] == [1, 2]
    for a, b in zip(model.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    # a truncated state is not trusted: training starts over and still ends at the same weights
    state.write_bytes(b"PK\x03\x04 truncated")
    m3, l3 = fresh()
    assert fit(m3, None, l3, data, train, seed=0, state_path=state).resumed_from_epoch == 0
    for a, b in zip(model.state_dict().values(), m3.state_dict().values()):
        assert torch.equal(a, b)
