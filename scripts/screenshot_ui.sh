#!/usr/bin/env bash
# A screenshot of the MLflow UI's runs page for a kdchain store, taken by headless Chromium.
#
#   scripts/screenshot_ui.sh [STORE_URI] [OUT.png] [PORT]
#     STORE_URI  default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db (the project's store)
#     OUT.png    default: docs/mlflow-runs.png
#     PORT       default: a free port on 127.0.0.1
#   env: PYTHON (default: python3), CHROMIUM (default: chromium), WINDOW (default: 1600,2700: the compare view, metrics included),
#        WAIT_MS (longest wait for the page to show the generations, default 180000), VIEW=compare|generations|runs (default compare: MLflow's
#        compare view of the latest chain's generations, their params and metrics side by side; generations: the
#        runs page filtered to them; runs: the experiment's runs page as it opens)
#
# Needs Debian's `chromium` (apt-get install chromium). Run from the repository root.
set -euo pipefail

PYTHON=${PYTHON:-python3}
CHROMIUM=${CHROMIUM:-chromium}
URI=${1:-${MLFLOW_TRACKING_URI:-sqlite:///mlruns/mlflow.db}}
OUT=${2:-docs/mlflow-runs.png}
PORT=${3:-$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
WINDOW=${WINDOW:-1600,2700}
WAIT_MS=${WAIT_MS:-180000}
VIEW=${VIEW:-compare}
BASE="http://127.0.0.1:$PORT"

command -v "$CHROMIUM" >/dev/null || { echo "screenshot_ui.sh: no $CHROMIUM; apt-get install chromium" >&2; exit 2; }

PROFILE=$(mktemp -d)
LOG=$(mktemp)
"$PYTHON" -m mlflow server --backend-store-uri "$URI" --host 127.0.0.1 --port "$PORT" --workers 1 >"$LOG" 2>&1 &
SERVER=$!
cleanup() { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$PROFILE" "$LOG"; }
trap cleanup EXIT
trap "exit 130" INT TERM

for _ in $(seq 1 120); do
    if "$PYTHON" -c "import urllib.request, sys; urllib.request.urlopen('$BASE/health', timeout=2)" 2>/dev/null; then
        break
    fi
    kill -0 "$SERVER" 2>/dev/null || { echo "screenshot_ui.sh: mlflow server exited:" >&2; cat "$LOG" >&2; exit 1; }
    sleep 0.5
done

mkdir -p "$(dirname "$OUT")"
# Chromium is driven over its DevTools protocol: the shot is taken once the runs table shows every generation of
# the latest chain (a fixed --virtual-time-budget either cuts the React app off mid-load on a busy machine or
# never ends while the page polls the server).
"$PYTHON" - "$URI" "$BASE" "$VIEW" "$OUT" "$CHROMIUM" "$PROFILE" "$WINDOW" "$WAIT_MS" <<'PY'
import base64, json, subprocess, sys, time, urllib.request
from pathlib import Path
from websockets.sync.client import connect

from flows.views import deep_links
from kdchain.tracking import latest_chain_experiment, open_tracker

uri, base, view, out, chromium, profile, window, wait_ms = sys.argv[1:]
links = dict(deep_links(uri, base))
if not links:
    sys.exit(f"screenshot_ui.sh: no kdchain chain runs in {uri}; run `kdchain run CONFIG` first")
url = {"generations": links.get("its generations"), "compare": links.get("compare them")}.get(view) or links["experiment runs"]
tracker = open_tracker(uri, latest_chain_experiment(uri))
_, rows = tracker.generation_table()
expect = [tracker.client.get_run(r["run_id"]).info.run_name for r in rows] if view != "runs" else []
if view == "compare":
    expect.append("test_accuracy")  # the metrics rows have rendered
print(f"screenshot of {url} -> {out}", flush=True)

direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1, whatever the proxy settings
browser = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                            f"--user-data-dir={profile}", "--no-first-run", "--hide-scrollbars",
                            f"--window-size={window}", "--remote-debugging-port=0", "about:blank"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    port_file, deadline = Path(profile) / "DevToolsActivePort", time.time() + 60
    while not port_file.is_file() or not port_file.read_text().strip():
        if time.time() > deadline or browser.poll() is not None:
            sys.exit("screenshot_ui.sh: chromium did not start its DevTools endpoint")
        time.sleep(0.2)
    port = port_file.read_text().split()[0]
    targets = json.load(direct.open(f"http://127.0.0.1:{port}/json/list"))
    ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
    with connect(ws_url, max_size=None, proxy=None) as ws:
        ids = iter(range(1, 1 << 30))

        def call(method, **params):
            i = next(ids)
            ws.send(json.dumps({"id": i, "method": method, "params": params}))
            while True:
                msg = json.loads(ws.recv())
                if msg.get("id") == i:
                    return msg.get("result", {})

        call("Page.enable")
        call("Page.navigate", url=url)
        deadline, text = time.time() + int(wait_ms) / 1000, ""
        while time.time() < deadline:
            text = call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                        returnByValue=True).get("result", {}).get("value", "")
            if all(e in text for e in expect):
                break
            time.sleep(1)
        else:
            missing = [e for e in expect if e not in text]
            print(f"screenshot_ui.sh: the page never showed {missing}; taking the shot anyway", file=sys.stderr)
        # the MLflow Assistant side panel would take a third of the picture: close it
        call("Runtime.evaluate", expression="""[...document.querySelectorAll('button')].filter(b =>
            /close/i.test(b.getAttribute('aria-label') || '') && b.getBoundingClientRect().left > innerWidth * 0.6
            && b.getBoundingClientRect().top < 80).forEach(b => b.click())""")
        time.sleep(3)  # let the page re-layout
        shot = call("Page.captureScreenshot", format="png")
        Path(out).write_bytes(base64.b64decode(shot["data"]))
finally:
    browser.terminate()
    browser.wait(10)
PY
test -s "$OUT" || { echo "screenshot_ui.sh: chromium wrote no screenshot" >&2; exit 1; }
echo "wrote $OUT"
