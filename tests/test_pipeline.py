"""Re-run stamps follow what a notebook imports: a changed dependency re-runs it, a comment, a docstring,
an unrelated module or an editor swap file does not."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from abi import pipeline
from abi.import_graph import RepoIndex, is_debris, notebook_code, parse_tolerant
from abi.paths import REPO_ROOT

# A small package laid out like abi: a dynamically imported claim package, a lazy import inside a
# function, a relative import, an f-string import over a package, and a package owning a checkpoint.
FAKE_TREE = {
    "abi/__init__.py": '"""The package."""\n',
    "abi/claims/__init__.py": (
        "import importlib\nimport pkgutil\n\n"
        "for info in pkgutil.iter_modules(__path__):\n"
        "    importlib.import_module(f'{__name__}.{info.name}')\n"
    ),
    "abi/claims/first.py": "from .helpers import scale\n\nFACTOR = scale(2)\n",
    "abi/claims/helpers.py": "def scale(x):\n    return 3 * x\n",
    "abi/core.py": (
        '"""Core maths."""\n\n\n'
        "def verdict(x):\n"
        '    """Lazy: only a call imports the report."""\n'
        "    from abi.reports.lazy import threshold\n\n"
        "    return x > threshold()  # strict\n"
    ),
    "abi/reports/__init__.py": "",
    "abi/reports/lazy.py": "def threshold():\n    return 0.5\n",
    "abi/reports/summary.py": "import importlib\n\n\ndef rows(claim):\n"
    "    return importlib.import_module(f'abi.reports.{claim}')\n",
    "abi/reports/tables.py": "TABLE = 1\n",
    "abi/store/__init__.py": "from pathlib import Path\n\nWEIGHTS = Path(__file__).parent / 'weights'\n",
    "abi/store/weights/w.bin": "\x00\x01",
    "abi/unrelated.py": "X = 1\n",
}


def _notebook(*cells: str) -> str:
    """A minimal notebook whose code cells are ``cells``."""
    return json.dumps(
        {
            "cells": [{"cell_type": "code", "source": cell} for cell in cells]
            + [{"cell_type": "markdown", "source": "from abi import unrelated"}]
        }
    )


@pytest.fixture
def fake_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary repository (no git: every file but editor debris counts) that the pipeline hashes."""
    for rel, text in FAKE_TREE.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "01_core.ipynb").write_text(
        _notebook("%matplotlib inline\n!ls\nfrom abi import core\nx = 1?", "import abi.claims\nimport abi.store")
    )
    (notebooks / "90_summary.ipynb").write_text(_notebook("from abi.reports.summary import rows"))
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.setattr(pipeline, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(pipeline, "NOTEBOOK_DIR", notebooks)
    monkeypatch.setattr(pipeline, "is_report", lambda name: False)  # no result files in the fake tree
    return tmp_path


def _deps(name: str) -> set[str]:
    return {path.relative_to(pipeline.REPO_ROOT).as_posix() for path in pipeline.notebook_dependencies(name)}


def _hash(name: str = "01_core") -> str:
    return pipeline.inputs_hash(pipeline.NOTEBOOK_DIR / f"{name}.ipynb", "cpu")


def _edit(root: Path, rel: str, old: str, new: str) -> None:
    path = root / rel
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new))


def test_notebook_03_covers_the_core_nib_module_it_imports():
    assert REPO_ROOT / "abi" / "experiments" / "core_nib.py" in pipeline.notebook_dependencies("03_objective_ablation")


def test_a_claims_run_depends_on_its_own_claim_only():
    """Editing claim 3's code leaves claims 1, 2 and 4 current: no claim notebook reaches the claim registry."""
    claims = [pipeline.claim_of(name) for name in pipeline.notebook_names() if not pipeline.is_report(name)]
    uses = {"objective_ablation": {"core_nib"}}  # claim 3 calibrates claim 1's anchor and candidates
    for name in pipeline.notebook_names():
        own = pipeline.claim_of(name)
        if pipeline.is_report(name):
            continue
        deps = _deps(name)
        others = [c for c in claims if c != own and c not in uses.get(own, set())]
        reached = sorted(rel for rel in deps for c in others if f"/{c}" in rel)
        assert reached == [], f"{name} depends on other claims' code: {reached}"
        assert "abi/claims.py" not in deps


def test_the_summary_depends_on_every_claim():
    deps = _deps("90_summary")
    assert "abi/claims.py" in deps and "abi/experiments/backbone_invariance_stats.py" in deps


def test_summary_covers_every_claim_report_it_imports():
    deps = pipeline.notebook_dependencies("90_summary")
    claims = [pipeline.claim_of(name) for name in pipeline.notebook_names()]
    reports = [REPO_ROOT / "abi" / "reports" / f"{claim}.py" for claim in claims]
    assert [path for path in reports if path.is_file() and path not in deps] == []


def test_the_graph_follows_lazy_relative_and_dynamic_imports(fake_repo: Path):
    deps = _deps("01_core")
    assert {"abi/core.py", "abi/reports/lazy.py", "abi/reports/__init__.py"} <= deps  # lazy, with its package
    assert {"abi/claims/first.py", "abi/claims/helpers.py"} <= deps  # pkgutil + import_module, relative import
    assert "abi/store/weights/w.bin" in deps  # data owned by an imported package
    assert not {"abi/unrelated.py", "abi/reports/summary.py", "abi/reports/tables.py"} & deps
    assert {"abi/reports/lazy.py", "abi/reports/tables.py"} <= _deps("90_summary")  # f"abi.reports.{claim}"
    assert "abi/store/weights/w.bin" not in _deps("90_summary")


def test_comments_and_docstrings_do_not_count_but_code_does(fake_repo: Path):
    before = _hash()
    _edit(fake_repo, "abi/core.py", "# strict", "# strictly greater, see the paper\n    # (two comment lines)")
    _edit(fake_repo, "abi/core.py", "Lazy: only a call", "Only a call")
    _edit(fake_repo, "abi/core.py", '"""Core maths."""', '"""Core maths, reworded."""')
    _edit(fake_repo, "abi/reports/lazy.py", "def threshold():", "# A comment.\ndef threshold():")
    assert _hash() == before
    _edit(fake_repo, "abi/reports/lazy.py", "0.5", "0.6")  # a lazily imported module's code
    assert _hash() != before


def test_cell_ids_and_editor_metadata_do_not_count_but_text_and_tags_do(fake_repo: Path):
    path = pipeline.NOTEBOOK_DIR / "01_core.ipynb"
    notebook = json.loads(path.read_text())
    before = _hash()
    for number, cell in enumerate(notebook["cells"]):  # what a JupyterLab or jupytext save adds
        cell["id"] = f"cell-{number}"
        cell["metadata"] = {"lines_to_next_cell": 2, "collapsed": True}
        cell["source"] = cell["source"].splitlines(keepends=True)  # nbformat's list-of-lines form
    notebook["metadata"] = {"kernelspec": {"name": "python3"}, "jupytext": {"formats": "ipynb,py:percent"}}
    path.write_text(json.dumps(notebook, indent=1))
    assert _hash() == before
    notebook["cells"][0]["metadata"]["tags"] = ["parameters"]
    path.write_text(json.dumps(notebook))
    with_tag = _hash()
    notebook["cells"][-1]["source"] = ["A reworded sentence."]
    path.write_text(json.dumps(notebook))
    assert len({before, with_tag, _hash()}) == 3


def test_checkpoint_and_relative_import_changes_count(fake_repo: Path):
    before = _hash()
    (fake_repo / "abi/store/weights/w.bin").write_bytes(b"\x00\x02")
    after_weights = _hash()
    _edit(fake_repo, "abi/claims/helpers.py", "3 * x", "4 * x")
    assert len({before, after_weights, _hash()}) == 3


def test_files_outside_the_graph_do_not_count(fake_repo: Path):
    before = _hash()
    _edit(fake_repo, "abi/unrelated.py", "X = 1", "X = 2")
    _edit(fake_repo, "abi/reports/tables.py", "TABLE = 1", "TABLE = 2")  # the summary's, not this notebook's
    assert _hash() == before


@pytest.mark.parametrize(
    "debris",
    [
        "abi/.core.py.swp",
        "abi/core.py~",
        "abi/.#core.py",
        "abi/#core.py#",
        "abi/__pycache__/core.cpython-311.pyc",
        "abi/store/weights/.w.bin.swp",
    ],
)
def test_editor_debris_does_not_count_without_git(fake_repo: Path, debris: str):
    before = _hash()
    (fake_repo / debris).parent.mkdir(parents=True, exist_ok=True)
    (fake_repo / debris).write_bytes(b"junk")
    assert _hash() == before
    assert is_debris(debris)


def test_only_tracked_files_count_with_git(fake_repo: Path):
    subprocess.run(["git", "init", "-q", str(fake_repo)], check=True)
    subprocess.run(["git", "-C", str(fake_repo), "add", "abi"], check=True)
    before = _hash()
    (fake_repo / "abi/store/weights/notes.txt").write_text("untracked")
    (fake_repo / "abi/claims/scratch.py").write_text("Y = 1\n")
    assert _hash() == before
    subprocess.run(["git", "-C", str(fake_repo), "add", "abi"], check=True)
    assert _hash() != before


def test_magics_and_shell_lines_are_skipped_not_fatal(fake_repo: Path):
    tree = parse_tolerant("%%time\nimport abi.core\n!pip list\nfiles = !ls\nabi.core?\nfrom abi import claims")
    assert [type(node).__name__ for node in tree.body] == ["Import", "ImportFrom"]
    assert len(notebook_code(pipeline.NOTEBOOK_DIR / "01_core.ipynb")) == 2  # markdown cells are not code


def test_build_plumbing_is_not_in_a_claim_notebooks_graph():
    deps = RepoIndex(REPO_ROOT).dependencies(pipeline.NOTEBOOK_DIR / "01_core_nib.ipynb")
    assert not {"abi/cli.py", "abi/pipeline.py", "abi/book_assets.py", "abi/verify.py"} & set(deps)
