"""Headless Chromium over its DevTools protocol, for what a person sees on a page: the text on the first screen
(inside the window, not cut off by an ellipsis) and screenshots. Used by scripts/screenshot_ui.py and the UI tests.
Needs Debian's `chromium` (apt-get install chromium) and the `websockets` package (an MLflow dependency)."""

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

# every text node inside the window whose element does not cut it off (ellipsis or overflow), in page order
FIRST_SCREEN_JS = r"""(() => {
  const out = [], walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode, text = node.textContent.trim();
    if (!text) continue;
    const el = node.parentElement, style = getComputedStyle(el);
    if (style.visibility === 'hidden' || style.display === 'none') continue;
    const range = document.createRange(); range.selectNodeContents(node);
    const r = range.getBoundingClientRect();
    if (!r.width || r.bottom <= 0 || r.top >= innerHeight || r.right <= 0 || r.left >= innerWidth) continue;
    if (r.right > innerWidth + 1 || el.scrollWidth > el.clientWidth + 2 && style.overflow !== 'visible') continue;
    out.push(text);
  }
  return out.join('\n');
})()"""


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """`with Chromium() as page: page.goto(url); page.wait_for([...]); page.first_screen(); page.screenshot(p)`"""

    def __init__(self, width: int = 1600, height: int = 1000, binary: str | None = None):
        self.width, self.height, self.binary = width, height, binary or chromium_path()
        if self.binary is None:
            raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")

    def __enter__(self) -> "Chromium":
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="kdchain-chromium-")
        self.proc = subprocess.Popen([self.binary, "--headless", "--no-sandbox", "--disable-gpu",
                                      "--disable-background-networking", "--no-first-run", "--hide-scrollbars",
                                      f"--user-data-dir={self.profile}", f"--window-size={self.width},{self.height}",
                                      "--remote-debugging-port=0", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, deadline = Path(self.profile) / "DevToolsActivePort", time.time() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.time() > deadline or self.proc.poll() is not None:
                self.__exit__()
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 whatever the proxy
        targets = json.load(direct.open(f"http://127.0.0.1:{port}/json/list"))
        ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        self.ws = connect(ws_url, max_size=None, proxy=None)
        self._ids = iter(range(1, 1 << 30))
        self.call("Page.enable")
        return self

    def __exit__(self, *exc) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)

    def call(self, method: str, **params) -> dict:
        i = next(self._ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == i:
                return msg.get("result", {})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True).get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def first_screen(self) -> str:
        """The text a person sees without scrolling or clicking: inside the window and not cut off."""
        return self.evaluate(FIRST_SCREEN_JS) or ""

    def wait_for(self, expected: list[str], timeout: float = 120.0, first_screen: bool = False) -> str:
        """Wait until every string of `expected` is on the page (on its first screen); returns that text. On
        timeout returns the last text seen (the caller's assertion says what is missing)."""
        deadline, text = time.time() + timeout, ""
        while time.time() < deadline:
            text = self.first_screen() if first_screen else self.text()
            if all(e in text for e in expected):
                return text
            time.sleep(0.5)
        return text

    def close_side_panels(self) -> None:
        """Close the MLflow Assistant panel (a third of the window, top right) and an announcement dialog (the
        registry's "new Model Registry UI") where they opened: a person closes them once, then sees the page."""
        self.evaluate("""[...document.querySelectorAll('button')].filter(b => {
            const r = b.getBoundingClientRect(), label = b.getAttribute('aria-label') || '';
            return /close/i.test(label) && (b.closest('[role=dialog]') || r.left > innerWidth * 0.6 && r.top < 80);
          }).forEach(b => b.click())""")

    def screenshot(self, path: str | Path) -> Path:
        shot = self.call("Page.captureScreenshot", format="png")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(base64.b64decode(shot["data"]))
        return Path(path)
