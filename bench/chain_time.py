"""Where the default chain's wall time goes: Prefect start-up, each generation's training, tracking.

    .venv/bin/python bench/chain_time.py [CONFIG]

Runs the chain once from scratch (fresh MLflow store and workdir in a temporary folder, the Prefect server as
`kdchain run` gets it: a kept one from `kdchain server start`, else a temporary one) and prints the breakdown.
"""

import os
import sys
import tempfile
import time

T_START = time.time()
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows import server  # noqa: E402

WHICH_SERVER = server.prestart()  # as `kdchain run` does: a kept server, or a temporary one overlapping the imports

from flows.chain import distill_chain  # noqa: E402
from kdchain.spec import load_spec  # noqa: E402

T_IMPORTED = time.time()


def main() -> None:
    config = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "configs" / "digits-chain.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        spec = load_spec(config, [f"workdir={tmp}/work", f"tracking.uri=sqlite:///{tmp}/store/mlflow.db"])
        t_call = time.time()
        server.ready()
        result = distill_chain(spec)
        t_end = time.time()
    print(f"chain {spec.name}: {len(result.generations)} generations, wall time {t_end - T_START:.1f} s")
    print(f"  imports (torch, prefect, mlflow)        {T_IMPORTED - T_START:6.1f} s")
    print(f"  Prefect start-up ({WHICH_SERVER} server){' ' * (14 - len(WHICH_SERVER))}"
          f"{result.flow_started - t_call:6.1f} s  (after the imports it overlaps)")
    total_train = total_track = 0.0
    for g in result.generations:
        s = g.seconds
        total_train += s["fit"]
        total_track += s["tracking"]
        print(f"  {g.name:>8}: fit {s['fit']:5.1f} s, evaluate {s['evaluate']:4.1f} s, profile {s['profile']:4.1f} s, "
              f"tracking {s['tracking']:4.1f} s   test acc {g.metrics['test_accuracy']:.2%}, "
              f"params {int(g.metrics['params']):,}")
    rest = (t_end - result.flow_started) - sum(sum(g.seconds.values()) for g in result.generations)
    print(f"  training, all generations               {total_train:6.1f} s")
    print(f"  tracking, all generations               {total_track:6.1f} s")
    print(f"  chain run set-up, registry, artifacts   {rest:6.1f} s")
    teacher, last = result.generations[0], result.generations[-1]
    print(f"  {last.name} has {teacher.metrics['params'] / last.metrics['params']:.1f}x fewer parameters than the "
          f"teacher; teacher test accuracy {teacher.metrics['test_accuracy']:.2%}, "
          f"{last.name} {last.metrics['test_accuracy']:.2%}")


if __name__ == "__main__":
    main()
