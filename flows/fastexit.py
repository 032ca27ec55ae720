"""Ending a command quickly: Python's own teardown after a chain costs seconds and does nothing a user needs."""

import atexit
import os
import sys
import threading


def exit_now(code: int) -> None:
    """Leave the process without tearing down every module: after a chain the interpreter spends 1.5-2.5 s here
    freeing torch, Prefect and MLflow object by object, for nothing. What a normal exit does that matters still
    happens first: output is flushed, non-daemon threads are joined, atexit handlers run (Prefect's temporary
    server stops, log and event workers drain, logging flushes). Used by the `kdchain` command and by the
    library-only side of bench/overhead.py, so that both pay the same exit."""
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)  # CPython's; elsewhere exit the normal way
    if run_exit_handlers is None:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    # what the interpreter runs before it joins the threads: concurrent.futures wakes its idle pool workers so that
    # they end (without it the join below waits forever on an MLflow download pool, e.g. after `kdchain export`)
    for callback in reversed(getattr(threading, "_threading_atexits", [])):
        callback()
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    run_exit_handlers()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
