"""The notebooks under notebooks/ are sources: no outputs, no execution counts, so diffs show code and text.

Executed copies (with outputs) live in book/executed/, written by papermill.
"""

from __future__ import annotations

import json

import pytest

from abi.paths import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks() -> None:
    assert len(NOTEBOOKS) >= 6


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_source_holds_no_outputs(path) -> None:
    cells = json.loads(path.read_text())["cells"]
    with_outputs = [i for i, cell in enumerate(cells) if cell.get("outputs")]
    counted = [i for i, cell in enumerate(cells) if cell.get("execution_count") is not None]
    assert not with_outputs, f"{path.name}: cells {with_outputs} carry outputs; clear them before committing"
    assert not counted, f"{path.name}: cells {counted} carry execution counts; clear them before committing"
