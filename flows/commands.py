"""The commands that run or serve flows: `kdchain run`, `retrain`, `schedule` and `server`. run and retrain start
as flows/startup.py says; what they print afterwards is theirs."""

import time

from flows import progress
from flows.command_helpers import fail, load_checked
from flows.startup import flow_run_link, start, watched
from flows.tables import generation_table


def cmd_run(args) -> int:
    from flows import server
    from kdchain.resolve import fresh_index

    spec = load_checked(args)
    fresh_index(spec, args.fresh)  # an unknown generation name: one line, before anything starts
    started = start(spec, args, f"kdchain: chain [bold]{spec.name}[/] — teacher → "
                    + " → ".join(g.name for g in spec.generations) + " (starting Prefect)")
    if isinstance(started, int):
        return started
    from flows.chain import distill_chain

    t0 = time.time()
    ended, result = watched(lambda: distill_chain(spec, tracking_uri=args.tracking_uri, fresh=args.fresh or False))
    if ended is not None:
        return ended
    rows = [{"name": g.name, "summary": g.summary, **g.metrics, "note": "reused" if g.name in result.reused else ""}
            for g in result.generations]
    progress.console.print(generation_table(rows, f"{spec.name}: {len(rows)} generations ({time.time() - t0:.0f} s)"))
    progress.console.print(f"MLflow store {result.tracking_uri}, experiment {spec.experiment_name()!r}, "
                           f"chain run {result.chain_run_id}")
    progress.console.print(f"registered models:/{spec.registered_name()}@latest "
                           f"(version {result.registered.rsplit('/', 1)[1]}); `kdchain ui` opens the MLflow UI")
    link = flow_run_link(started.server, result.flow_run_id)
    if link:
        progress.console.print(f"Prefect flow run: {link}", soft_wrap=True)
    waited = server.temporary_startup_seconds()
    if started.server == "temporary" and waited and waited > 3:
        progress.console.print(f"Prefect's temporary server took {waited:.0f} s to start; `kdchain server start` "
                               "keeps one running for later runs (and its UI)")
    return 0


def cmd_retrain(args) -> int:
    spec = load_checked(args)
    started = start(spec, args, f"kdchain: retraining [bold]{spec.name}[/], then newcomer vs champion (starting "
                    "Prefect)", flow_module="flows.retrain")
    if isinstance(started, int):
        return started
    from flows.retrain import retrain

    ended, result = watched(lambda: retrain(spec, tracking_uri=args.tracking_uri, force=args.force))
    if ended is not None:
        return ended
    if result.outcome == "skipped":
        progress.console.print(f"{result.model_name}: {result.reason}")
        return 0
    champ = (f"champion version {result.champion_before} at {result.champion_test_accuracy:.2%}"
             if result.champion_before else "no champion yet")
    progress.console.print(f"{result.model_name} version {result.new_version} at {result.new_test_accuracy:.2%} vs "
                           f"{champ}: [bold]{result.outcome}[/] ({result.reason})")
    progress.console.print(f"models:/{result.model_name}@champion is version {result.champion_after}")
    return 0


def cmd_schedule(args) -> int:
    from flows import server

    spec = load_checked(args)  # a bad config fails here, before anything is served
    server.use_kept()  # never a temporary server: the schedule must outlive this command
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.settings import get_current_settings
    from pydantic import ValidationError

    try:
        CronSchedule(cron=args.cron)
    except ValidationError:
        return fail(f"kdchain schedule: --cron {args.cron!r} is not a cron expression "
                     "(five fields: minute hour day month weekday, e.g. '0 3 * * 1' = Mondays 03:00)")
    api = get_current_settings().api.url
    if not api:
        return fail("kdchain schedule: schedules fire only with a Prefect server that outlives this command: run "
                     "`kdchain server start` (or point PREFECT_API_URL at your server) and retry")
    from flows.retrain import retrain

    name = args.name or f"{spec.name}-retrain"
    parameters = {"config": str(args.config.resolve()), "overrides": args.set or []}
    if args.tracking_uri:
        parameters["tracking_uri"] = args.tracking_uri
    if args.force:
        parameters["force"] = True
    print(f"kdchain: serving deployment retrain/{name} (cron {args.cron!r}) on {api}; Ctrl-C stops serving", flush=True)
    retrain.serve(name=name, cron=args.cron, parameters=parameters, paused=False,
                  description=f"Scheduled retraining of {spec.name}: champion moves only for a better model")
    return 0


def cmd_server(args) -> int:
    from flows import server

    if args.action == "start":
        try:
            url = server.start_background(args.port)
        except RuntimeError as e:
            return fail(f"kdchain: {e}")
        print(f"Prefect server at {url.removesuffix('/api')} (UI and API); `kdchain run` uses it from now on "
              f"instead of starting a temporary one. Stop it with `kdchain server stop`.")
        return 0
    if args.action == "stop":
        print("stopped the Prefect server" if server.stop_background() else "no Prefect server started by kdchain")
        return 0
    url = server.background_url()
    print(f"Prefect server at {url.removesuffix('/api')}" if url else
          "no Prefect server kept by kdchain: `kdchain run` starts a temporary one (`kdchain server start` keeps one)")
    return 0
