"""The runnable blocks of the docs pages on shipping, the UI and models, as tests/test_docs.py runs the README's (a file of their
own, so that the pages spread over the test workers)."""

import pytest

from tests.conftest import ROOT
from tests.docs_blocks import SHIP_PAGES, run_page


@pytest.mark.parametrize("page", SHIP_PAGES)
def test_the_page_runs(page, tmp_path, monkeypatch, capsys, prefect_harness):
    run_page(ROOT / "docs" / page, tmp_path, monkeypatch, capsys)
