"""Screenshots of the pages a person visits, as they first appear, in headless Chromium: `kdchain ui` is started on
the store and each link it prints is opened without a click; with a Prefect server kept by `kdchain server start`
(or PREFECT_API_URL), the page of its latest flow run too.

    .venv/bin/python scripts/screenshot_ui.py [--tracking-uri URI] [--out docs] [--port N]

Writes OUT/ui-generations.png, ui-chain-run.png, ui-runs.png, ui-logged-models.png, ui-registered-model.png,
ui-registry.png and, with a Prefect server, prefect-flow-run.png. Needs Debian's `chromium`. Run from the
repository root.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.headless import Chromium, chromium_path  # noqa: E402

# link printed by `kdchain ui` -> (file name, texts that say the page has rendered)
PAGES = {"its generations": ("ui-generations.png", ["test_accuracy", " · "]),
         "latest chain run": ("ui-chain-run.png", ["Description", "test_accuracy"]),
         "experiment runs": ("ui-runs.png", ["test_accuracy", "seed"]),
         "logged models": ("ui-logged-models.png", ["Ready"]),
         "model registry": ("ui-registered-model.png", ["Version"])}


def kdchain_ui(uri: str, port: int) -> tuple[subprocess.Popen, dict[str, str]]:
    """`kdchain ui` on the store; returns it and the links it printed (it prints them once the server answers)."""
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--tracking-uri", uri, "--port", str(port),
                             "--no-browser"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    links = {}
    for line in proc.stdout:
        what, _, url = line.strip().partition(": ")
        if url.strip().startswith("http"):
            links[what.strip()] = url.strip()
        if what.startswith(("model registry", "(no kdchain")):
            break
    if not links:
        os.killpg(proc.pid, signal.SIGTERM)
        sys.exit(f"screenshot_ui.py: `kdchain ui` printed no links for {uri}; run `kdchain run CONFIG` first")
    return proc, links


def prefect_flow_run_url() -> str | None:
    """The latest chain flow run's page on the Prefect server kdchain would use, if one answers."""
    from flows import server

    server.use_kept()
    if not os.environ.get("PREFECT_API_URL"):
        return None
    import httpx

    api = os.environ["PREFECT_API_URL"].rstrip("/")
    runs = httpx.post(f"{api}/flow_runs/filter", json={"sort": "START_TIME_DESC", "limit": 1,
                                                         "flows": {"name": {"any_": ["distill-chain"]}}},
                      timeout=10).json()
    return f"{api.removesuffix('/api')}/runs/flow-run/{runs[0]['id']}" if runs else None


def shoot(page: Chromium, url: str, out: Path, expected: list[str]) -> None:
    page.goto(url)
    text = page.wait_for(expected, timeout=120, first_screen=True)
    missing = [e for e in expected if e not in text]
    if missing:
        print(f"screenshot_ui.py: {out.name}: the page never showed {missing}; taking the shot anyway", file=sys.stderr)
    time.sleep(2)  # charts and late cells settle
    page.close_side_panels()
    time.sleep(1)
    page.screenshot(out)
    print(f"wrote {out}  ({url})", flush=True)


def main() -> int:
    from flows.command_helpers import fail as _fail
    from kdchain.tracking import resolve_uri
    from kdchain.tracking.labels import registry_url
    from tests.conftest import free_port

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or the project's store)")
    p.add_argument("--out", type=Path, default=Path("docs"))
    p.add_argument("--port", type=int, help="port of the MLflow UI (default: a free one)")
    args = p.parse_args()
    if chromium_path() is None:
        return _fail("screenshot_ui.py: no chromium on PATH (Debian: apt-get install chromium)")
    port = args.port or free_port()
    proc, links = kdchain_ui(resolve_uri(args.tracking_uri), port)
    try:
        with Chromium(1600, 1000) as page:
            for what, (name, expected) in PAGES.items():
                if what in links:
                    shoot(page, links[what], args.out / name, expected)
            shoot(page, registry_url(f"http://127.0.0.1:{port}"), args.out / "ui-registry.png", ["Registered Models"])
            flow_run = prefect_flow_run_url()
            if flow_run:
                shoot(page, flow_run, args.out / "prefect-flow-run.png", ["seed", "INFO"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
