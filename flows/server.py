"""Start Prefect's temporary local server in the background, so its 8-15 s start-up overlaps the CLI's own work.

With no PREFECT_API_URL, the first Prefect client starts `SubprocessASGIServer()` (a per-process singleton: a
uvicorn subprocess) and waits for its health check. `prestart()` does that in a thread while the caller imports
torch/MLflow, checks the spec and opens the store; `ready()` joins it before the flow runs, and the flow's client
then finds the same singleton already up. Nothing changes when PREFECT_API_URL names a real server.
"""

import os
import threading

STARTUP_TIMEOUT_S = 120
_thread: threading.Thread | None = None
_error: list[BaseException] = []


def _start() -> None:
    try:
        from prefect.server.api.server import SubprocessASGIServer

        # Prefect counts only its own 0.1 s sleeps toward the timeout; on a busy shared box the default is too short
        SubprocessASGIServer().start(timeout=STARTUP_TIMEOUT_S)
    except BaseException as e:  # reported by ready(); the flow would then start the server itself
        _error.append(e)


def prestart() -> None:
    global _thread
    if os.environ.get("PREFECT_API_URL") or os.environ.get("KDCHAIN_PREFECT_PRESTART") == "0" or _thread is not None:
        return
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return
    _thread = threading.Thread(target=_start, name="prefect-server-start", daemon=True)
    _thread.start()


def ready() -> None:
    """Wait for the background start-up; on failure fall back to Prefect starting the server itself."""
    if _thread is not None:
        _thread.join()
    if _error:
        from prefect.server.api.server import SubprocessASGIServer

        SubprocessASGIServer().running = False
