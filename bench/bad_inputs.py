"""The bad inputs as a user meets them: each through `kdchain validate` and `kdchain run` as a fresh process
(python -m flows.cli, so the seconds include Python, torch and MLflow imports), with the exit code, the lines on
stderr, the wall seconds, the CPU seconds (user + system: what the wall time is on an idle machine, where a busy
shared one stretches the wall time) and whether anything was written beside the config.

    python bench/bad_inputs.py            (the inputs of tests/test_bad_inputs.py)
"""

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_bad_inputs import BAD  # noqa: E402

print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
print(f"{'input':<40} {'command':<9} {'exit':>4} {'lines':>5} {'wall s':>6} {'cpu s':>5}  written  traceback")
worst, worst_cpu, failures = 0.0, 0.0, 0
for name, (content, expected) in BAD.items():
    for command in ("validate", "run"):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            data = content(tmp)
            path = tmp / "chain.yaml"
            path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
            t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
            r = subprocess.run([sys.executable, "-m", "flows.cli", command, str(path)], cwd=ROOT,
                               capture_output=True, text=True, timeout=120)
            seconds, c1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
            written = sorted(p.name for p in tmp.iterdir() if p.name != "chain.yaml")
        lines = r.stderr.strip().splitlines()
        ok = r.returncode == 2 and len(lines) == 1 and expected in lines[0] and not written and seconds < 10
        failures += not ok
        worst, worst_cpu = max(worst, seconds), max(worst_cpu, cpu)
        print(f"{name:<40} {command:<9} {r.returncode:>4} {len(lines):>5} {seconds:>6.1f} {cpu:>5.1f}  "
              f"{','.join(written) or '-':<7}  {'yes' if 'Traceback' in r.stderr else 'no'}")
print(f"{2 * len(BAD)} refusals: {2 * len(BAD) - failures} as required (exit 2, one line naming the field, nothing "
      f"written, under 10 s wall), {failures} not; slowest {worst:.1f} s wall, {worst_cpu:.1f} s CPU; load average "
      f"now {os.getloadavg()[0]:.1f}")
