"""Shared by the bench scripts: import this checkout's packages, run commands, time things."""

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_CONFIG = ROOT / "configs" / "digits-chain.yaml"
ENV = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
       "PREFECT_HOME": os.environ.get("PREFECT_HOME", "/tmp/prefect-kdchain-bench"), "PYTHONWARNINGS": "ignore"}


def timed_run(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    """(wall seconds, stdout) of a subprocess run from the repo root; raises with its output on failure."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env or ENV, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def cli_run(config: Path, workdir: Path, extra: list[str] = (), env: dict | None = None) -> tuple[float, str]:
    """`kdchain run` (this checkout's) on a fresh store and workdir; (wall seconds, stdout)."""
    return timed_run([sys.executable, "-m", "flows.cli", "run", str(config), "--fresh",
                      "--tracking-uri", f"sqlite:///{workdir / 'store' / 'mlflow.db'}",
                      "--set", f"workdir={workdir / 'work'}", *extra], env)
