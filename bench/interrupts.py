"""How `kdchain run` ends when it is stopped from outside: seconds to exit, exit code, lines on stderr, processes
of its tree left 5 s later, MLflow runs left RUNNING.

    python bench/interrupts.py [trials]      (default 2 per ending)

Each trial is a real `kdchain run` of a digits chain with Prefect's temporary server (a new user's setup), stopped
during a teacher epoch picked at random (2-5) by: Ctrl-C to the process group (`ctrl-c`), SIGTERM to kdchain
(`sigterm`), `kill -9` of kdchain (`kill-9`), or `kill -9` of the Prefect server (`server-lost`). The promised
bounds: 5 s (signals), no process left after 5 s (kill -9), 30 s (server lost). A kill -9 cannot end its MLflow
runs: they stay RUNNING until the next run of the chain ends them as KILLED (and resumes the generation).
"""

import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow import MlflowClient  # noqa: E402

from tests.conftest import write_config  # noqa: E402
from tests.test_interrupts import alive, descendants, slow_chain, start, until_epoch  # noqa: E402

trials = int(sys.argv[1]) if len(sys.argv) > 1 else 2
work = Path(tempfile.mkdtemp(prefix="kdchain-interrupts-"))
env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING"))}
env.update(PREFECT_HOME=str(work / "prefect-home"), PYTHONUNBUFFERED="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
rng = random.Random(0)


def stop(how: str, proc, tree: set[int]) -> None:
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    elif how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    elif how == "kill-9":
        proc.kill()
    else:
        for pid in tree:
            os.kill(pid, signal.SIGKILL)


print(f"{'ending':<12} {'epoch':>5} {'exit s':>7} {'code':>5} {'stderr lines':>12} {'left after 5 s':>14} "
      f"{'RUNNING runs':>12}")
for how in ("ctrl-c", "sigterm", "kill-9", "server-lost"):
    for trial in range(trials):
        folder = work / f"{how}-{trial}"
        folder.mkdir()
        cfg = slow_chain(folder, f"{how}-{trial}")
        proc = start(write_config(folder, cfg), env)
        epoch = rng.randint(2, 5)
        until_epoch(proc, rf"\s*teacher epoch {epoch}/200")
        tree = descendants(proc.pid)
        t0 = time.monotonic()
        stop(how, proc, tree)
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - t0
        time.sleep(max(0.0, 5 - took))
        client = MlflowClient(cfg["tracking"]["uri"])
        exp = client.get_experiment_by_name(cfg["name"])
        running = sum(r.info.status == "RUNNING" for r in client.search_runs([exp.experiment_id]))
        print(f"{how:<12} {epoch:>5} {took:>7.1f} {proc.returncode:>5} {len(err.strip().splitlines()):>12} "
              f"{len(alive(tree)):>14} {running:>12}", flush=True)
