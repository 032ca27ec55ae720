"""A generation trained data-parallel on 2 CPU processes (train.distributed: gloo, torch's elastic launch): it
learns as one process does, logs one MLflow point per epoch, survives a rank's death and the launcher's kill -9
(the rerun resumes), and refuses settings that cannot work."""

import os
import re
import signal
import time
from pathlib import Path

import pytest

from flows.cli import main
from kdchain.chain import train_generation
from kdchain.distill import RankFailed
from kdchain.spec import ChainSpec
from kdchain.tracking import GENERATION
from tests.conftest import free_port, tiny_chain, write_config
from tests.test_interrupts import alive, descendants, until_epoch
from tests.test_reliability import cli, cli_env, epoch_steps, finish, gen_runs, runs_of, store  # noqa: F401

EPOCHS = 12


def ddp_chain(tmp_path: Path, name: str, nproc: int) -> dict:
    cfg = tiny_chain(tmp_path, name=name, epochs=1)
    cfg["teacher"]["train"] |= {"epochs": EPOCHS, "distributed": {"nproc": nproc}}
    # A distils from the teacher's cached outputs (each rank computes a share, all ranks gather them)
    cfg["generations"] = [cfg["generations"][0] | {"train": {"epochs": 3, "distributed": {"nproc": nproc}}}]
    return cfg


def ranks(pid: int) -> list[int]:
    """The rank processes below `pid` (torch's elastic agent spawns them), oldest first."""
    found = []
    for child in sorted(descendants(pid)):
        try:
            cmdline = (Path("/proc") / str(child) / "cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            found.append(child)
    return found


def teacher_run(cfg: dict):
    return next(r for r in gen_runs(runs_of(store(cfg), cfg["name"])) if r.data.tags.get(GENERATION) == "0")


@pytest.mark.slow  # about 90 s of CPU: 4 launches of 2 ranks, each importing torch
def test_two_ranks_learn_as_one_process_survive_a_dead_rank_and_a_killed_launcher(tmp_path, cli_env):
    """One chain run three times: a rank killed, then the launcher killed -9, then to the end."""
    single = train_generation(ChainSpec.model_validate(ddp_chain(tmp_path / "single", "single", 1)), 0, None,
                              tmp_path / "single" / "teacher")[0].metrics["test_accuracy"]
    cfg = ddp_chain(tmp_path, "ddp", 2)
    path = write_config(tmp_path, cfg)

    # 1. one rank killed alone: the generation ends with one line naming it, its run FAILED (never RUNNING)
    proc = cli(["run", str(path)], cli_env, start_new_session=True)
    until_epoch(proc, rf"\s*teacher epoch 3/{EPOCHS}")
    victim = ranks(proc.pid)[-1]
    os.kill(victim, signal.SIGKILL)
    code, out, err = finish(proc, timeout=60)
    assert code == 1, out + err
    assert re.fullmatch(rf"kdchain: teacher: rank [01] of 2 \(pid {victim}\) was killed by SIGKILL",
                        err.strip()), err
    assert "RUNNING" not in {r.info.status for r in runs_of(store(cfg), "ddp")}
    assert teacher_run(cfg).info.status == "FAILED"
    logged = len(epoch_steps(store(cfg), teacher_run(cfg).info.run_id))

    # 2. rerun: all ranks restart after the last finished epoch; then the launcher is killed -9 mid-generation
    proc = cli(["run", str(path)], cli_env, start_new_session=True)
    seen = "".join(until_epoch(proc, rf"\s*teacher epoch {logged + 3}/{EPOCHS}"))
    resumed = int(re.search(rf"teacher: resuming after epoch (\d+)/{EPOCHS}", seen).group(1))
    assert resumed >= logged, seen
    tree = ranks(proc.pid)
    assert len(tree) == 2, tree
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while alive(set(tree)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(set(tree)), "a rank trained on after its launcher was killed"

    # 3. rerun to the end: the same MLflow run, one point per epoch, the single-process accuracy
    code, out, err = finish(cli(["run", str(path)], cli_env), timeout=300)  # 2 rank launches on a busy box
    assert code == 0, out + err
    again = int(re.search(rf"teacher: resuming after epoch (\d+)/{EPOCHS}", out).group(1))
    assert again >= logged + 3, out
    run = teacher_run(cfg)
    assert run.info.status == "FINISHED"
    assert epoch_steps(store(cfg), run.info.run_id) == list(range(1, EPOCHS + 1))
    student = next(r for r in gen_runs(runs_of(store(cfg), "ddp")) if r.data.tags.get(GENERATION) == "1")
    assert epoch_steps(store(cfg), student.info.run_id) == [1, 2, 3]
    assert student.data.metrics["test_accuracy"] > 0.25, student.data.metrics  # chance: 0.10
    ddp = run.data.metrics["test_accuracy"]
    print(f"teacher test accuracy after {EPOCHS} epochs: 1 process {single:.4f}, 2 ranks {ddp:.4f}")
    assert abs(ddp - single) <= 0.015, (single, ddp)


def test_settings_that_cannot_work_exit_2_and_a_rendezvous_nobody_joins_fails_in_its_timeout(tmp_path, capfd):
    for setting, words in [("nproc=0", "nproc: Input should be greater than or equal to 1"),
                           ("backend=nccl", "backend: nccl needs CUDA"),
                           ("nnodes=2", "rdzv_endpoint: 2 nodes must meet at one address"),
                           ("nproc=65", "nproc: 65 ranks share batches of 64 images")]:
        cfg = ddp_chain(tmp_path, "bad", 2)
        key, value = setting.split("=")
        cfg["teacher"]["train"]["distributed"][key] = int(value) if value.isdigit() else value
        assert main(["validate", str(write_config(tmp_path, cfg))]) == 2, setting
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"teacher.train.distributed.{words}" in err[0], err

    # a rendezvous on this machine that the second node never joins (tests reach loopback addresses only)
    endpoint = f"127.0.0.1:{free_port()}"
    cfg = ddp_chain(tmp_path, "rdzv", 2)
    cfg["teacher"]["train"]["distributed"] |= {"nnodes": 2, "rdzv_endpoint": endpoint, "rdzv_timeout": 2}
    t0 = time.monotonic()
    with pytest.raises(RankFailed) as failed:
        train_generation(ChainSpec.model_validate(cfg), 0, None, tmp_path / "rdzv")
    # its 2 s, not torch's default of minutes (a bound against a hang, not a timing)
    assert time.monotonic() - t0 < 120
    assert len(str(failed.value).splitlines()) == 1
    assert f"rendezvous {endpoint} within" in str(failed.value) and "(rdzv_timeout 2 s)" in str(failed.value)
