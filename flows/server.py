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

The temporary server is kdchain's child and ends with it (`own_temporary_server`): it runs in its own session, so a
terminal's Ctrl-C reaches kdchain alone, which ends its runs and then stops the server (Prefect's atexit); and under
a parent watch (flows/parentwatch.py), so that a `kill -9` of kdchain leaves no server behind.
"""

import contextlib
import fcntl
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


class _OwnedSubprocess:
    """`subprocess` as seen by prefect.server.api.server: its Popen of the temporary server gets a session of its
    own and the parent watch; Prefect's command, environment and stop() stay its own."""

    def __getattr__(self, name):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(args, **kwargs):
        if list(args[:2]) == [sys.executable, "-m"]:
            args = [sys.executable, "-m", "flows.parentwatch", str(os.getpid()), *args[1:]]
            env = kwargs.get("env") or dict(os.environ)
            root = str(Path(__file__).resolve().parents[1])  # where `flows` is importable from
            kwargs["env"] = {**env, "PYTHONPATH": os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)}
        return subprocess.Popen(args, start_new_session=True, **kwargs)


def own_temporary_server() -> None:
    """Make the temporary server (if Prefect starts one in this process) a child that dies with kdchain."""
    import prefect.server.api.server as prefect_server

    prefect_server.subprocess = _OwnedSubprocess()


@contextlib.contextmanager
def _migrating_once():
    """Two runs starting temporary servers on a fresh PREFECT_HOME would both migrate its database at once (the
    loser prints a 200-line traceback, then recovers). The first start per Prefect version holds a file lock
    until its server answers, i.e. has migrated; a marker then lets later starts skip the lock."""
    import prefect

    home = prefect_home()
    marker = home / "kdchain-migrated"
    if marker.is_file() and marker.read_text() == prefect.__version__:
        yield
        return
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "kdchain-migrate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield
        marker.write_text(prefect.__version__)


def _start() -> None:
    try:
        from prefect.server.api.server import SubprocessASGIServer

        t0 = time.perf_counter()
        with _migrating_once():
            # Prefect counts only its own 0.1 s sleeps toward the timeout; on a busy shared box the default is short
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
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():  # set in the active Prefect profile
        return "configured"
    own_temporary_server()
    if os.environ.get("KDCHAIN_PREFECT_PRESTART") == "0" or _thread is not None:
        return "temporary"
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


def api_url() -> str | None:
    """The API URL the flow talks to: the configured or kept server's, else the temporary one's (after ready())."""
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return get_current_settings().api.url
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    return server.api_url if server.running else None


def kill_temporary(api_url: str) -> None:
    """SIGKILL kdchain's temporary server when it is the one at `api_url` and it hangs: Prefect's calls to a server
    that accepts connections but never answers wait a minute each, to a dead one they fail at once."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    process = getattr(server, "server_process", None)
    if server.running and server.api_url == api_url and process is not None:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, 9)  # its own session (_OwnedSubprocess): the wrapper and uvicorn together


def flush_logs() -> None:
    """Send Prefect's queued log records now: at exit the temporary server stops before Prefect's log worker
    drains (atexit runs in reverse order), which would print "Error logging to API" after our last line."""
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=3)


def temporary_startup_seconds() -> float | None:
    return _started_in[0] if _started_in else None
