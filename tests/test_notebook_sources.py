"""The notebooks under notebooks/ are sources: no outputs, no execution counts, so diffs show code and text.

Each is paired with a jupytext py:percent file beside it (notebooks/jupytext.toml), so reviews read as
code; the pair must agree. Executed copies (with outputs) live in book/executed/, written by papermill.
The pre-commit hooks (.pre-commit-config.yaml) keep both true at commit time, offline.
"""

from __future__ import annotations

import json
import shlex

import jupytext
import pytest
import yaml

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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_and_its_py_percent_pair_agree(path) -> None:
    pair = path.with_suffix(".py")
    fix = "run `make sync-notebooks` (jupytext --sync updates the older of the two)"
    assert pair.is_file(), f"{path.name} has no paired {pair.name}; {fix}"
    assert pair.read_text() == jupytext.writes(jupytext.read(path), fmt="py:percent"), (
        f"{pair.name} and {path.name} differ; {fix}"
    )


def test_every_py_percent_file_has_its_notebook() -> None:
    orphans = [p.name for p in (REPO_ROOT / "notebooks").glob("*.py") if not p.with_suffix(".ipynb").is_file()]
    assert not orphans, f"text notebooks without their .ipynb: {orphans}; pair them (jupytext --sync) or delete them"


def test_pre_commit_hooks_are_local_tools_of_the_environment() -> None:
    """Hook repositories cannot be fetched here: every hook must be local and run an installed tool."""
    config = yaml.safe_load((REPO_ROOT / ".pre-commit-config.yaml").read_text())
    hooks = [hook for repo in config["repos"] for hook in repo["hooks"]]
    assert [repo["repo"] for repo in config["repos"]] == ["local"] * len(config["repos"])
    assert {"ruff-check", "ruff-format", "nbstripout", "jupytext-sync"} <= {hook["id"] for hook in hooks}
    for hook in hooks:
        executable = REPO_ROOT / shlex.split(hook["entry"])[0]
        assert hook["language"] == "system" and executable.is_file(), f"{hook['id']}: {hook['entry']}"
