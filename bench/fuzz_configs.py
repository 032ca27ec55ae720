"""Runs the config-fuzzing property of tests/test_fuzz_config.py longer and prints what it tried, by kind.

    python bench/fuzz_configs.py [examples]      (default 1000)

Every example must either validate (exit 0, "OK: ...") or be refused (exit 2, one line per problem, no traceback,
nothing written); the mutation kinds that are always mistakes (booleans for numbers, zero losses, absurd sizes, bad tracking URIs and
workdirs, keys given twice, files that are not UTF-8) must always be refused. A failing example stops the run with
hypothesis's minimal reproduction.
"""

import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests import test_fuzz_config as fuzz  # noqa: E402

examples = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
samples: dict[str, list[str]] = {}


@settings(max_examples=examples, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def prop(data):
    fuzz.check_one(data)


prop()
c: Counter = fuzz.COUNTS
print(f"{c[('example', 'validated')] + c[('example', 'refused')]} examples: "
      f"{c[('example', 'refused')]} refused (exit 2), {c[('example', 'validated')]} validated (exit 0), "
      "0 tracebacks, 0 other exit codes, store and workdir untouched in all")
print(f"{'mutation kind':<16} {'tried':>6} {'refused':>8} {'validated':>10} {'n/a':>5}")
for kind in fuzz.KINDS:
    r, v, n = c[(kind, "refused")], c[(kind, "validated")], c[(kind, "not applicable")]
    print(f"{kind:<16} {r + v + n:>6} {r:>8} {v:>10} {n:>5}")
