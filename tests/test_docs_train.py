"""The runnable blocks of the docs pages on retraining and sweeps, as tests/test_docs.py runs the README's (a file of their
own, so that the pages spread over the test workers)."""

import pytest

from tests.conftest import ROOT
from tests.docs_blocks import TRAIN_PAGES, run_page


# sweeps.md's sweep (4 chains, 33 s) runs in make test-all; make test parses its commands (tests/test_docs.py)
@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.slow) if p == "sweeps.md" else p
                                  for p in TRAIN_PAGES])
def test_the_page_runs(page, tmp_path, monkeypatch, capsys, prefect_harness):
    run_page(ROOT / "docs" / page, tmp_path, monkeypatch, capsys)
