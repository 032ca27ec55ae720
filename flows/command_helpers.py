"""What the commands share (run, retrain, sweep, ...): a user mistake as lines on stderr and an exit code, the
pre-flight check of what this machine must offer, and a Prefect console that keeps to warnings."""

import logging
import sys

EXIT_USAGE = 2


def fail(lines: list[str] | str, code: int = EXIT_USAGE) -> int:
    for line in [lines] if isinstance(lines, str) else lines:
        print(line, file=sys.stderr)
    return code


def load_checked(args):
    """The config with its `--set`s, checked as far as building its models (SpecError: one line a problem)."""
    from kdchain.checks import check_chain
    from kdchain.spec import load_spec

    spec = load_spec(args.config, args.set or [])
    check_chain(spec, source=str(args.config))
    return spec


def machine_problems(spec, args) -> list[str]:
    """What this machine must offer before training: files on disk (weights, data), models that run, export and
    quantize as `deploy` asks, CUDA for `device: cuda`, a writable workdir and MLflow store, a tracking server that
    answers. Creates nothing."""
    from kdchain.checks import deploy_problems, forward_problems, missing_resources
    from kdchain.tracking import resolve_uri, store_problem, tracking_problem
    from kdchain.writable import unwritable_reason

    problems = missing_resources(spec, str(args.config))
    problems = problems or forward_problems(spec, str(args.config))  # with its weights and data on disk
    problems = problems or deploy_problems(spec, str(args.config))  # what it ships: ONNX, int8, QAT
    workdir = unwritable_reason(spec.workdir)
    if workdir:
        problems.append(f"{args.config}: workdir: cannot write {spec.workdir} ({workdir}); make it writable or "
                        "set `workdir:` to a folder you can write")
    uri = resolve_uri(getattr(args, "tracking_uri", None), spec.tracking.uri)
    store = store_problem(uri) or tracking_problem(uri)
    if store:
        from_config = uri == spec.tracking.uri and not getattr(args, "tracking_uri", None)
        problems.append(f"{args.config}: tracking.uri: {store}" if from_config else f"kdchain: {store}")
    return problems


def not_a_run_failure(record) -> bool:
    return not (record.levelno >= 40 and record.name.startswith(("prefect.task_runs", "prefect.flow_runs",
                                                                  "prefect.task_engine", "prefect.flow_engine")))


def quiet_console() -> None:
    """Prefect's console handler shows warnings only (our progress bars say what happens; the Prefect API still
    receives every INFO record), and no traceback of a failed task or flow: the command reports it in one line."""
    logging.getLogger("mlflow").setLevel(logging.ERROR)  # registration notices, the pickle-format caution
    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "PrefectConsoleHandler":
            handler.setLevel(max(handler.level, logging.WARNING))
            handler.addFilter(not_a_run_failure)
