"""Orchestration + tracking overhead: `kdchain run` against the same library calls with no Prefect, no MLflow.

Both sides run as fresh processes (imports and, for kdchain run, Prefect's temporary server start-up included),
alternating, `--repeat` times. Three ways to get a Prefect server: the temporary one each run starts (overlapped
with imports: the default), the same not overlapped (KDCHAIN_PREFECT_PRESTART=0), and a server kept by
`kdchain server start` before the runs (started once, outside the timing, as a user does once per machine), the
last also run a second time into the store the first created (no migrations: a user's every later run).

    python bench/overhead.py [--config configs/digits-chain.yaml] [--repeat 1]
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DEFAULT_CONFIG, ENV, ROOT, cli_run, timed_run


def kept_server(action: str, env: dict) -> None:
    cmd = [sys.executable, "-m", "flows.cli", "server", action]
    if action == "start":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            cmd += ["--port", str(s.getsockname()[1])]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)


def library_only(config: str, workdir: str) -> None:
    """The library calls `kdchain run` makes, in order, with nothing around them."""
    from kdchain.chain import train_generation
    from kdchain.checks import check_chain
    from kdchain.spec import load_spec

    spec = load_spec(config, [f"workdir={workdir}"])
    gens = check_chain(spec)
    teacher = None
    for gen in gens:
        out = Path(workdir) / f"{gen.index}-{gen.name}"
        outcome, _ = train_generation(spec, gen.index, teacher, out)
        teacher = Path(outcome.checkpoint)
        print(f"{gen.name} test_accuracy {outcome.metrics['test_accuracy']:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--no-baseline-prestart", action="store_true", help="skip the run without the overlap")
    ap.add_argument("--library-only", metavar="WORKDIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.library_only:
        library_only(args.config, args.library_only)
        from flows.fastexit import exit_now  # the exit `kdchain run` takes: the comparison stays like for like

        exit_now(0)

    rows = []
    kept_env = {**ENV, "PREFECT_HOME": tempfile.mkdtemp(prefix="kdchain-kept-prefect-")}
    kept_env.pop("PREFECT_API_URL", None)
    kept_server("start", kept_env)
    try:
        for r in range(args.repeat):
            rows.append(one_repeat(args, r, kept_env))
    finally:
        kept_server("stop", kept_env)
    for key, what in (("kdchain_run", "temporary server"), ("kdchain_run_kept", "kept server"),
                      ("kdchain_run_kept_again", "kept server and an existing store")):
        best = min(rows, key=lambda r: r[key] - r["library"])
        print(f"overhead with a {what} (best of {len(rows)}): {(best[key] - best['library']) / best[key]:.1%} "
              f"(target <= 10%)")


def one_repeat(args, r: int, kept_env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="kdchain-overhead-") as tmp:
        tmp = Path(tmp)
        lib, _ = timed_run([sys.executable, __file__, "--config", args.config, "--library-only", str(tmp / "lib")])
        print(f"  library only: {lib:.1f} s", flush=True)
        full, _ = cli_run(Path(args.config), tmp / "cli")
        print(f"  kdchain run: {full:.1f} s", flush=True)
        kept, _ = cli_run(Path(args.config), tmp / "cli-kept", env=kept_env)
        print(f"  kdchain run, kept server: {kept:.1f} s", flush=True)
        # the same command again: the store exists now (no migrations), as on a user's every later run
        again, _ = cli_run(Path(args.config), tmp / "cli-kept", env=kept_env)
        print(f"  kdchain run, kept server, existing store: {again:.1f} s", flush=True)
        row = {"library": lib, "kdchain_run": full, "kdchain_run_kept": kept, "kdchain_run_kept_again": again}
        if not args.no_baseline_prestart:
            try:  # Prefect's own start-up may time out on a busy machine: report it, keep the rest
                row["kdchain_run_no_prestart"], _ = cli_run(Path(args.config), tmp / "cli2",
                                                             env={**ENV, "KDCHAIN_PREFECT_PRESTART": "0"})
            except SystemExit as e:
                print(f"  kdchain run without the pre-start failed: {str(e).splitlines()[-1]}", flush=True)
    over = (full - lib) / full
    print(f"repeat {r + 1}: library only {lib:.1f} s, kdchain run {full:.1f} s -> Prefect+MLflow "
          f"{full - lib:+.1f} s = {over:.1%} of the chain's wall time"
          + (f"; without the server pre-start {row['kdchain_run_no_prestart']:.1f} s "
             f"({(row['kdchain_run_no_prestart'] - lib) / row['kdchain_run_no_prestart']:.1%})"
             if "kdchain_run_no_prestart" in row else "")
          + f"; with a kept server {kept:.1f} s ({(kept - lib) / kept:.1%}); and an existing store {again:.1f} s "
            f"({(again - lib) / again:.1%})", flush=True)
    return row


if __name__ == "__main__":
    main()
