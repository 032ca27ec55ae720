"""What the docs tests share (not a test module): the fenced blocks of README.md and docs/*.md, the kdchain
commands in them, and running a page's runnable blocks (tests/test_docs*.py say which pages)."""

import re
import shlex
from pathlib import Path

import yaml

from flows.cli import main
from tests.conftest import ROOT

PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
# the docs pages with runnable blocks, by the test file that runs them (a file a worker: they spread over the workers)
TRAIN_PAGES = ["retraining.md", "sweeps.md"]
SHIP_PAGES = ["models-and-data.md", "shipping.md", "ui.md"]
FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```", re.M | re.S)
def blocks(page: Path) -> list[tuple[str, str, list[str]]]:
    """(language, mark, lines) of each fenced block: `bash run: fast` -> ("bash", "run: fast", lines)."""
    out = []
    for m in FENCE.finditer(page.read_text()):
        language, _, mark = m.group("info").strip().partition(" ")
        out.append((language, mark.strip(), m.group("body").splitlines()))
    return out


def commands(lines: list[str], prompt: bool = False) -> list[list[str]]:
    """The kdchain command lines as argv (comments dropped); `prompt`: only lines typed after `$ `."""
    out = []
    for line in lines:
        line = line.strip()
        if prompt:
            if not line.startswith("$ kdchain "):
                continue
            line = line[2:]
        if line.startswith("kdchain "):
            out.append(shlex.split(line, comments=True)[1:])
    return out


def fast(argv: list[str], cwd: Path) -> list[str]:
    """The same command, each generation trained 1 epoch (marks: a few hundred images)."""
    config = next((a for a in argv[1:] if a.endswith((".yaml", ".yml"))), None)
    if argv[0] not in ("run", "retrain", "sweep") or config is None:
        return argv
    cfg = yaml.safe_load((cwd / config).read_text())
    sets = [] if "from" in cfg["teacher"] else ["teacher.train.epochs=1"]
    sets += [f"generations.{i}.train.epochs=1" for i in range(len(cfg["generations"]))]
    if cfg["data"]["kind"] == "marks":
        sets += ["data.train_size=400", "data.val_size=100", "data.test_size=200"]
    return argv + [token for s in sets for token in ("--set", s)]


def runnable(page: Path) -> bool:
    return any(language == "bash" and mark.startswith("run") for language, mark, _ in blocks(page))


def run_page(page: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Every command of the page's runnable blocks, in order, in a folder of its own (its configs/ the
    repository's): each must exit as its block says, without a traceback."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    # the default store, mlruns/mlflow.db, as an absolute path: MLflow keeps one engine per URI in a process, and
    # the relative URI would reach the first page's folder from every later page
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    ran = 0
    for language, mark, lines in blocks(page):
        if language != "bash" or not mark.startswith("run"):
            continue
        expected = int(mark.rsplit(" ", 1)[1]) if mark.startswith("run: exit") else 0
        for argv in commands(lines):
            argv = fast(argv, tmp_path) if mark == "run: fast" else argv
            code = main(argv)
            out, err = capsys.readouterr()
            assert code == expected, f"{page.name}: `kdchain {' '.join(argv)}` exited {code}\n{out}\n{err}"
            assert "Traceback" not in out + err
            ran += 1
    assert ran
