"""Run a Python module that must not outlive the process that started it: `python -m flows.parentwatch <pid> -m
<module> <args...>`.

kdchain starts Prefect's temporary server this way. A `kill -9` of `kdchain run` runs no atexit handler, so
Prefect's own `stop()` never comes; this watch does it instead. prctl(PR_SET_PDEATHSIG) cannot: it fires when the
*thread* that forked the child ends, and the server is started from a short-lived thread (flows/server.py
prestart). A pidfd (Linux 5.3+) wakes the watch the moment the parent exits; elsewhere it polls getppid().
"""

import os
import runpy
import select
import signal
import sys
import threading
import time

GRACE_S = 2.0  # after SIGTERM, the server's own shutdown gets this long before the process is ended outright


def _wait_for_exit(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd: poll; the parent is gone once this process is re-parented
        while os.getppid() == pid:
            time.sleep(0.5)
        return
    select.select([fd], [], [])


def _watch(pid: int) -> None:
    _wait_for_exit(pid)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down on SIGTERM
    time.sleep(GRACE_S)
    os._exit(0)


def main() -> None:
    pid, flag, module, *args = sys.argv[1:]
    if flag != "-m":
        raise SystemExit("usage: python -m flows.parentwatch <pid> -m <module> [args...]")
    if os.getppid() != int(pid):  # the parent died before this line
        raise SystemExit(0)
    threading.Thread(target=_watch, args=(int(pid),), name="parent-watch", daemon=True).start()
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
