"""Ending `kdchain run` early, for real: Ctrl-C to the process group, kill -9, the Prefect server dying.

These runs use Prefect's temporary server (no PREFECT_API_URL), the server a new user gets and the process at
stake: it must not catch the terminal's Ctrl-C, must not outlive kdchain, and its loss must end the run quickly.
One Prefect home for the module, so that its database is migrated once.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, tiny_chain, write_config
from tests.test_reliability import cli_env, epoch_steps, finish, gen_runs, runs_of, store  # noqa: F401

# about 4 minutes: each test starts `kdchain run` with its own temporary Prefect server, as a new user's
# terminal does, and signals it; `make test-all`
pytestmark = pytest.mark.slow


LINE = "kdchain: interrupted; run the same command again to resume (finished generations are kept)"


@pytest.fixture(scope="module")
def temp_server_env(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING"))}
    env.update(PREFECT_HOME=str(tmp_path_factory.mktemp("prefect-home")), PYTHONUNBUFFERED="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def start(path: Path, env: dict) -> subprocess.Popen:
    """`kdchain run` as a terminal job: the leader of its own process group."""
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (from /proc), whatever its session."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(pid)
    return out


def until_epoch(proc: subprocess.Popen, pattern: str) -> list[str]:
    """Read stdout until a line matches `pattern` (an epoch line: the temporary server is up and training runs)."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if re.match(pattern, line):
            return seen
    raise AssertionError("".join(seen) + proc.stderr.read())


def slow_chain(tmp_path: Path, name: str, epochs: int = 200) -> dict:
    """Digits epochs of 0.1-0.3 s: many of them, so that the signal arrives during training."""
    cfg = tiny_chain(tmp_path, name=name, epochs=1)
    cfg["teacher"]["train"]["epochs"] = epochs
    return cfg


def training(tmp_path: Path, name: str, env: dict) -> tuple[dict, subprocess.Popen, set[int]]:
    """(config, `kdchain run` in its second teacher epoch, the processes it started)."""
    cfg = slow_chain(tmp_path, name)
    proc = start(write_config(tmp_path, cfg), env)
    until_epoch(proc, r"\s*teacher epoch 2/200")
    return cfg, proc, descendants(proc.pid)


def test_ctrl_c_to_the_process_group_ends_the_run_and_the_rerun_resumes(tmp_path, temp_server_env, cli_env):
    cfg = slow_chain(tmp_path, "ctrlc", epochs=40)
    path = write_config(tmp_path, cfg)
    proc = start(path, temp_server_env)
    until_epoch(proc, r"\s*teacher epoch 3/40")
    tree = descendants(proc.pid)
    assert tree, "the temporary Prefect server is a child of kdchain"
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    code, out, err = finish(proc, timeout=30)  # a hang guard; bench/interrupts.py times it (about 1 s)
    assert code == 130, out + err
    assert err.strip().splitlines() == [LINE], err
    assert "Traceback" not in out + err
    time.sleep(0.5)
    assert not alive(tree), f"left running: {alive(tree)}"

    client = store(cfg)
    runs = runs_of(client, "ctrlc")
    assert {r.info.status for r in runs} == {"KILLED"}, [(r.data.tags.get("kdchain.kind"), r.info.status)
                                                         for r in runs]
    teacher_run = gen_runs(runs)[0].info.run_id
    done = len(epoch_steps(client, teacher_run))
    assert done >= 3

    # the same command again (here on the session's Prefect server: quicker) resumes the teacher in its own run
    code, out, err = finish(subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(path)], cwd=ROOT,
                                             env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    assert code == 0, out + err
    assert f"teacher: resuming after epoch {done}/40 (MLflow run {teacher_run[:8]} continued)" in out, out
    assert epoch_steps(client, teacher_run) == list(range(1, 41))


def test_sigterm_ends_the_run_with_143(tmp_path, temp_server_env):
    cfg, proc, tree = training(tmp_path, "term", temp_server_env)
    proc.send_signal(signal.SIGTERM)  # kdchain alone, as a service manager or `kill` sends it
    code, out, err = finish(proc, timeout=30)  # a hang guard; bench/interrupts.py times it
    assert code == 143, out + err
    assert err.strip().splitlines() == [
        "kdchain: stopped by SIGTERM; run the same command again to resume (finished generations are kept)"], err
    time.sleep(0.5)
    assert not alive(tree)
    assert {r.info.status for r in runs_of(store(cfg), "term")} == {"KILLED"}


def test_kill_9_leaves_no_process_of_its_tree(tmp_path, temp_server_env):
    _, proc, tree = training(tmp_path, "orphan", temp_server_env)
    assert tree
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while alive(tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(tree), f"still running 5 s after kill -9: {alive(tree)}"


@pytest.mark.parametrize("how", ["killed", "hung"])
def test_a_lost_prefect_server_ends_the_run_with_one_line(tmp_path, temp_server_env, how):
    """Killed: connections are refused. Hung (SIGSTOP): connections are accepted and never answered, which Prefect's
    client would wait on for minutes; kdchain gives it KDCHAIN_SERVER_HUNG_S (90 s by default, 8 s here)."""
    cfg, proc, server = training(tmp_path, f"lost-{how}", {**temp_server_env, "KDCHAIN_SERVER_HUNG_S": "8"})
    for pid in server:
        os.kill(pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
    try:
        code, out, err = finish(proc, timeout=60)  # a hang guard; bench/interrupts.py times it
    finally:  # a stopped server that kdchain failed to end must not outlive the test
        for pid in alive(server):
            os.kill(pid, signal.SIGKILL)
    assert code == 1, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.match(r"kdchain: the Prefect server at http://127.0.0.1:\d+/api stopped answering; "
                                        r"the MLflow runs are ended \(KILLED\)", lines[0]), err
    assert "Traceback" not in out + err
    statuses = {r.info.status for r in runs_of(store(cfg), f"lost-{how}")}
    assert "RUNNING" not in statuses and statuses == {"KILLED"}, statuses


def test_two_runs_on_a_fresh_prefect_home_migrate_it_once(tmp_path, temp_server_env):
    env = {**temp_server_env, "PREFECT_HOME": str(tmp_path / "fresh-prefect-home")}
    procs = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        cfg = tiny_chain(tmp_path / name, name=name)
        cfg["generations"] = cfg["generations"][:1]
        procs.append(start(write_config(tmp_path / name, cfg), env))
    for proc in procs:
        code, out, err = finish(proc, timeout=300)
        assert code == 0, out + err
        assert "Traceback" not in out + err and "Error" not in err, err
