"""Every command a user is told to type, run: the fenced `bash` blocks of README.md and docs/*.md.

A block's info string says how: `bash run` (as written), `bash run: fast` (each chain trains 1 epoch a generation,
on a few hundred images for marks), `bash run: exit N` (the command must exit N), or `bash skip: <why>` (a GPU,
internet, hours, a server that serves until Ctrl-C, the Makefile's own set-up). A bash block without a mark
fails, and every `kdchain` line of any block, and every `$ kdchain ...` line shown in an output block, must parse:
a renamed flag breaks the suite, not a user. Each page runs in a folder of its own (its `configs/` the
repository's), so the default workdir and store (`mlruns/`) are that folder's.
"""

import re

import pytest

from flows.cli import build_parser
from tests.docs_blocks import PAGES, SHIP_PAGES, TRAIN_PAGES, blocks, commands, run_page, runnable


def test_every_bash_block_is_marked_run_or_skip_with_a_reason():
    unmarked = [f"{page.name}: {lines[:1]}" for page in PAGES for language, mark, lines in blocks(page)
                if language in ("bash", "sh", "shell", "console")
                and not (mark in ("run", "run: fast") or re.fullmatch(r"run: exit \d+", mark)
                         or (mark.startswith("skip:") and len(mark) > len("skip: ") + 10))]
    assert not unmarked, unmarked


def test_every_command_shown_parses():
    parser = build_parser()
    shown = [(page.name, argv) for page in PAGES for language, _, lines in blocks(page)
             for argv in commands(lines, prompt=language != "bash")]
    assert len(shown) > 20
    for name, argv in shown:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{name}: `kdchain {' '.join(argv)}` does not parse")


def test_the_readme_runs(tmp_path, monkeypatch, capsys, prefect_harness):
    run_page(PAGES[0], tmp_path, monkeypatch, capsys)


def test_every_page_with_runnable_blocks_is_run_by_a_test():
    assert {p.name for p in PAGES if runnable(p)} == {"README.md", *TRAIN_PAGES, *SHIP_PAGES}
