"""The one start-up of every command that runs a flow (run, retrain, sweep), in this order:

1. signals: Ctrl-C and SIGTERM end the runs KILLED, with one line (flows/signals.py);
2. the machine's checks, and the command's own (deploy, the sweep's grid): any problem is a line each, exit 2,
   and nothing has started or been written;
3. Prefect: the kept server, or a temporary one starting in the background while Prefect and MLflow import;
4. a console that keeps to warnings (progress bars and our lines say what happens), the store created once;
5. the announcement, then waiting for the server to answer;
6. the flow, watched: a lost server, Ctrl-C, SIGTERM or an unusable store end it with one line (`watched`).
"""

from dataclasses import dataclass

from flows import progress, signals
from flows.command_helpers import fail, machine_problems, quiet_console


@dataclass
class Started:
    server: str  # "kept", "external" or "temporary" (flows/server.py)
    tracking_uri: str


def start(spec, args, announce: str, problems: list[str] = (), flow_module: str = "flows.chain") -> Started | int:
    """Steps 1-5 for `spec` (the first chain's, for a sweep); an exit code when a check refuses it. `flow_module`
    is imported while the temporary server starts."""
    import importlib

    from flows import server

    signals.install()
    problems = machine_problems(spec, args) or list(problems)
    if problems:  # before Prefect or MLflow start: nothing is trained or written
        return fail(problems)
    # only now: a server starting beside a refusal tripled its time on a busy 2-core box and printed its own lines
    which = server.prestart()
    importlib.import_module(flow_module)
    quiet_console()
    from kdchain.tracking import prepare_store, resolve_uri

    uri = resolve_uri(getattr(args, "tracking_uri", None), spec.tracking.uri)
    prepare_store(uri)  # an unusable store fails before Prefect starts
    progress.console.print(announce)
    server.ready()
    return Started(which, uri)


def watched(call, interrupted_line=lambda line: line):
    """Step 6: runs `call` with the kept or temporary server watched and progress shown. Ctrl-C, SIGTERM, a lost
    Prefect server or an unusable store end it with one line (`interrupted_line` may reword it): returns
    (exit code, None) then, else (None, what `call` returned)."""
    from flows import server
    from kdchain.tracking import StoreError

    url = server.api_url()
    watching = signals.watch_server(url) if url else None
    progress.enable()
    try:
        return None, call()
    except BaseException as e:  # flows/signals.py says which of these end with one line
        progress.disable()
        ended = signals.line_and_code(e)
        if ended is not None:
            server.flush_logs()
            return fail(interrupted_line(ended[0]), ended[1]), None
        if isinstance(e, StoreError):
            return fail(f"kdchain: {e}"), None
        raise
    finally:
        if watching is not None:
            watching.set()
        progress.disable()


def flow_run_link(which_server: str, flow_run_id: str | None) -> str | None:
    """The flow run's page in the Prefect UI, where a server outlives this command."""
    if which_server == "temporary" or not flow_run_id:
        return None
    from prefect.settings import get_current_settings

    ui = get_current_settings().ui_url
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui else None
