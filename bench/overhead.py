"""Orchestration + tracking overhead: `kdchain run` against the same library calls with no Prefect, no MLflow.

Both sides run as fresh processes (imports and, for kdchain run, Prefect's temporary server start-up included),
alternating, `--repeat` times. Also `kdchain run` with the server start-up not overlapped
(KDCHAIN_PREFECT_PRESTART=0), to show what the overlap buys.

    python bench/overhead.py [--config configs/digits-chain.yaml] [--repeat 1]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import DEFAULT_CONFIG, ENV, cli_run, timed_run


def library_only(config: str, workdir: str) -> None:
    """The library calls `kdchain run` makes, in order, with nothing around them."""
    from kdchain.chain import check_chain, train_generation
    from kdchain.specs import load_spec

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
        return library_only(args.config, args.library_only)

    rows = []
    for r in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="kdchain-overhead-") as tmp:
            tmp = Path(tmp)
            lib, _ = timed_run([sys.executable, __file__, "--config", args.config, "--library-only", str(tmp / "lib")])
            print(f"  library only: {lib:.1f} s", flush=True)
            full, _ = cli_run(Path(args.config), tmp / "cli")
            print(f"  kdchain run: {full:.1f} s", flush=True)
            row = {"library": lib, "kdchain_run": full}
            if not args.no_baseline_prestart:
                try:  # Prefect's own start-up may time out on a busy machine: report it, keep the rest
                    row["kdchain_run_no_prestart"], _ = cli_run(Path(args.config), tmp / "cli2",
                                                                 env={**ENV, "KDCHAIN_PREFECT_PRESTART": "0"})
                except SystemExit as e:
                    print(f"  kdchain run without the pre-start failed: {str(e).splitlines()[-1]}", flush=True)
        rows.append(row)
        over = (full - lib) / full
        print(f"repeat {r + 1}: library only {lib:.1f} s, kdchain run {full:.1f} s -> Prefect+MLflow "
              f"{full - lib:+.1f} s = {over:.1%} of the chain's wall time"
              + (f"; without the server pre-start {row['kdchain_run_no_prestart']:.1f} s "
                 f"({(row['kdchain_run_no_prestart'] - lib) / row['kdchain_run_no_prestart']:.1%})"
                 if "kdchain_run_no_prestart" in row else ""), flush=True)
    best = min(rows, key=lambda r: (r["kdchain_run"] - r["library"]) / r["kdchain_run"])
    print(f"overhead (best of {len(rows)}): {(best['kdchain_run'] - best['library']) / best['kdchain_run']:.1%} "
          f"(target <= 10%)")


if __name__ == "__main__":
    main()
