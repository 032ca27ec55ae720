"""Which Prefect server `kdchain run` talks to, and how its start-up stays off the critical path.

In order:
1. PREFECT_API_URL in the environment: that server; nothing here starts anything.
2. A server kept in the background by `kdchain server start` (Prefect's own `prefect server start --background`,
   its URL recorded in $PREFECT_HOME/kdchain-server.json): used when its health check answers. No start-up cost,
   and its UI shows every run's flow and task runs.
3. PREFECT_API_URL in the active Prefect profile.
4. Otherwise Prefect's temporary local server. With no PREFECT_API_URL the first Prefect client starts
   `SubprocessASGIServer()` (a per-process singleton: a uvicorn subprocess, 7-15 s on this 2-core box) and waits
   for its health check. `prestart()` does that in a thread while the caller imports torch/MLflow, checks the
   spec and opens the store; `ready()` joins it before the flow runs, and the flow's client then finds the same
   singleton already up.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

STARTUP_TIMEOUT_S = 120
STATE_FILE = "kdchain-server.json"
_thread: threading.Thread | None = None
_error: list[BaseException] = []
_started_in: list[float] = []  # seconds the temporary server took to answer


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()


def _healthy(api_url: str, timeout: float = 2.0) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def background_url() -> str | None:
    """The API URL of the server `kdchain server start` left running, if it still answers."""
    try:
        url = json.loads((prefect_home() / STATE_FILE).read_text())["api_url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if _healthy(url) else None


def start_background(port: int) -> str:
    """`prefect server start --background` on 127.0.0.1:`port`; waits until it answers; returns its API URL."""
    url = background_url()
    if url:
        return url
    api_url = f"http://127.0.0.1:{port}/api"
    if _healthy(api_url, timeout=1.0):
        raise RuntimeError(f"port {port} already serves a Prefect API that kdchain did not start; set "
                           f"PREFECT_API_URL={api_url} to use it, or pick another --port")
    # the UI's own API URL: Prefect derives it from PREFECT_SERVER_API_PORT (4200), not from --port, so a UI on
    # another port would call 127.0.0.1:4200/api ("Can't connect to Server API")
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_API_URL": api_url}
    proc = subprocess.run([sys.executable, "-m", "prefect", "server", "start", "--background", "--host", "127.0.0.1",
                           "--port", str(port)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        why = next((line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()), "")
        raise RuntimeError(f"`prefect server start --background` failed: {why[:200]}")
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not _healthy(api_url, timeout=1.0):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Prefect server on port {port} did not answer within {STARTUP_TIMEOUT_S} s; "
                               f"see `prefect server stop` and {prefect_home()}")
        time.sleep(0.2)
    prefect_home().mkdir(parents=True, exist_ok=True)
    (prefect_home() / STATE_FILE).write_text(json.dumps({"api_url": api_url}))
    return api_url


def stop_background() -> bool:
    """Stop the server `kdchain server start` started; False when none was recorded."""
    state = prefect_home() / STATE_FILE
    if not state.exists():
        return False
    subprocess.run([sys.executable, "-m", "prefect", "server", "stop"], capture_output=True, text=True)
    state.unlink(missing_ok=True)
    return True


def _start() -> None:
    try:
        from prefect.server.api.server import SubprocessASGIServer

        t0 = time.perf_counter()
        # Prefect counts only its own 0.1 s sleeps toward the timeout; on a busy shared box the default is too short
        SubprocessASGIServer().start(timeout=STARTUP_TIMEOUT_S)
        _started_in.append(time.perf_counter() - t0)
    except BaseException as e:  # reported by ready(); the flow would then start the server itself
        _error.append(e)


def use_kept() -> bool:
    """Point Prefect at the kept server when PREFECT_API_URL is not set and one answers; before prefect's settings
    load (they read the environment once)."""
    url = None if os.environ.get("PREFECT_API_URL") else background_url()
    if url:
        os.environ["PREFECT_API_URL"] = url
    return url is not None


def prestart() -> str:
    """Pick the server (see the module docstring) before prefect is imported; returns which: "configured",
    "background" or "temporary"."""
    global _thread
    if use_kept():
        return "background"
    if os.environ.get("PREFECT_API_URL"):
        return "configured"
    if os.environ.get("KDCHAIN_PREFECT_PRESTART") == "0" or _thread is not None:
        return "temporary"
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():  # set in the active Prefect profile
        return "configured"
    _thread = threading.Thread(target=_start, name="prefect-server-start", daemon=True)
    _thread.start()
    return "temporary"


def ready() -> None:
    """Wait for the background start-up; on failure fall back to Prefect starting the server itself."""
    if _thread is not None:
        _thread.join()
    if _error:
        from prefect.server.api.server import SubprocessASGIServer

        SubprocessASGIServer().running = False


def temporary_startup_seconds() -> float | None:
    return _started_in[0] if _started_in else None
