"""How `kdchain run` ends early: Ctrl-C (SIGINT), SIGTERM, or the Prefect server going away.

All three raise `Interrupted` (a KeyboardInterrupt) in the main thread, where training runs: the generation and
chain runs are ended KILLED on the way out (flows/chain.py), and the command prints one line and exits 128 + the
signal (130 for Ctrl-C, 143 for SIGTERM; 1 for a lost server). A second signal while that clean-up runs leaves at
once. The temporary Prefect server is in a session of its own (flows/server.py), so a terminal's Ctrl-C does not
stop it before kdchain has recorded the interruption; Prefect's atexit hook stops it afterwards.
"""

import _thread
import logging
import os
import signal
import sys
import threading
import time

RESUME = "run the same command again to resume (finished generations are kept)"
WATCH_EVERY_S = 2.0  # how often the Prefect server's health is checked while a chain runs
# A server that accepts connections but has not answered /health for this long is hung (e.g. stopped, or stuck on
# its database); a busy 2-core machine answers within seconds, so this is generous. The env var is for tests.
HUNG_AFTER_S = float(os.environ.get("KDCHAIN_SERVER_HUNG_S", "90"))
_received: list[int] = []
_lost: list[str] = []  # the API URL of a Prefect server that stopped answering


class Interrupted(KeyboardInterrupt):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def line_and_code(e: BaseException | None = None) -> tuple[str, int] | None:
    """The one line and the exit code for an ending this module caused (or a plain KeyboardInterrupt); None for
    any other exception. After a lost server, Prefect's own calls fail with connection errors: those count too."""
    if _lost:
        return (f"kdchain: the Prefect server at {_lost[0]} stopped answering; the MLflow runs are ended (KILLED); "
                f"{RESUME}", 1)
    if isinstance(e, Interrupted) or _received:
        signum = e.signum if isinstance(e, Interrupted) else _received[0]
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        return f"kdchain: {what}; {RESUME}", 128 + signum
    if isinstance(e, KeyboardInterrupt):
        return f"kdchain: interrupted; {RESUME}", 128 + signal.SIGINT
    return None


def _in_store_write(frame) -> bool:
    """True inside MLflow's SQL store: an exception raised there would leave the SQLite write lock held by a
    connection nobody closes, and ending the runs afterwards would wait on "database is locked"."""
    while frame is not None:
        if any(part in frame.f_code.co_filename for part in UNSAFE):
            return True
        frame = frame.f_back
    return False


UNSAFE = (f"{os.sep}sqlalchemy{os.sep}", f"{os.sep}mlflow{os.sep}store{os.sep}", f"{os.sep}sqlite3{os.sep}")


def _on_signal(signum, frame):
    if _received:  # a second signal while kdchain ends its runs: leave now
        print(line_and_code()[0], file=sys.stderr, flush=True)
        os._exit(128 + signum)
    if _in_store_write(frame):  # a few ms later, once the write is done
        threading.Timer(0.02, _thread.interrupt_main, (signum,)).start()
        return
    _received.append(signum)
    raise Interrupted(signum)


def install() -> None:
    """Ctrl-C and SIGTERM end the run as described above (only the main thread may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)


def claim_sigterm() -> None:
    """Inside a flow: Prefect's engine answers SIGTERM with its own handler, which raises TerminationSignal
    wherever the main thread is (a database write included); take SIGTERM back when install() was called.
    Prefect restores the handler it found when the flow ends."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is _on_signal:
        signal.signal(signal.SIGTERM, _on_signal)


def _health(api_url: str) -> str:
    """"refused" when nothing listens at the server any more, "slow" when it did not answer within WATCH_EVERY_S
    (a busy machine, or a hung server: watch_server tells them apart by how long it lasts), else "ok"."""
    import httpx

    try:
        httpx.get(f"{api_url}/health", timeout=WATCH_EVERY_S)
    except (httpx.ConnectError, httpx.RemoteProtocolError):
        return "refused"
    except httpx.HTTPError:
        return "slow"
    return "ok"


def watch_server(api_url: str) -> threading.Event:
    """Check the Prefect server every WATCH_EVERY_S while the chain runs; two refused checks in a row, or no answer
    for HUNG_AFTER_S, end the run (see the module docstring) instead of Prefect's client retrying each call for
    minutes. Set the returned event to stop watching."""
    done = threading.Event()

    def watch():
        misses, answered = 0, time.monotonic()
        while not done.wait(WATCH_EVERY_S):
            health = _health(api_url)
            misses = misses + 1 if health == "refused" else 0
            answered = time.monotonic() if health == "ok" else answered
            if (misses == 2 or time.monotonic() - answered > HUNG_AFTER_S) and not done.is_set():
                from prefect.settings import get_current_settings

                _lost.append(api_url)
                if misses < 2:  # hung, not gone: if it is kdchain's own server, make it gone
                    from flows import server

                    server.kill_temporary(api_url)
                get_current_settings().client.max_retries = 0  # every later call fails at once instead
                for name in ["prefect", *logging.root.manager.loggerDict]:  # its failures are said in one line;
                    if name.startswith("prefect"):  # children too: prefect._internal's loggers ignore levels
                        logging.getLogger(name).disabled = True
                logging.raiseExceptions = False  # nor "--- Error logging to API ---" from its log worker
                _thread.interrupt_main(signal.SIGINT)  # runs _on_signal in the main thread (install() first)
                return

    threading.Thread(target=watch, name="prefect-server-watch", daemon=True).start()
    return done
