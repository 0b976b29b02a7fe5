"""The contract every claim keeps, checked once for all of them.

Shape: ``abi/experiments/<claim>.py`` runs the experiment; ``<claim>_stats.py`` derives and decides
(``derive``, ``claim_verdict``, ``glue_values``, ``PUBLISHED``); ``abi/reports/<claim>.py`` only formats
and ``abi/plotting/<claim>.py`` only draws. The layering is read from the sources with ``ast``, so a
forbidden import is found even where it sits inside a function. Behaviour: the committed result file
re-derives, a tampered derived value is refused, and ``validate`` refuses an unknown parameter or an
out-of-range value before any model loads.
"""

from __future__ import annotations

import ast
import importlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from abi.claims import claim_modules
from abi.paths import REPO_ROOT
from abi.profiles import ParameterError, claim_profiles
from abi.results import ResultFileError, load_result

CLAIM_MODULES = claim_modules()
CLAIMS = sorted(CLAIM_MODULES)
STATS_FUNCTIONS = ("derive", "claim_verdict", "glue_values")


def _source(module: str) -> Path:
    return REPO_ROOT / f"{module.replace('.', '/')}.py"


def _imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, at any depth (``from a import b`` counts ``a`` and ``a.b``)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def _top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


# -- shape ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("claim", CLAIMS)
def test_every_claim_has_stats_reports_and_plotting_modules(claim: str) -> None:
    for module in (f"abi.experiments.{claim}_stats", f"abi.reports.{claim}", f"abi.plotting.{claim}"):
        assert _source(module).is_file(), f"{module} is missing"
    missing = {*STATS_FUNCTIONS, "PUBLISHED"} - _top_level_names(_source(f"abi.experiments.{claim}_stats"))
    assert not missing, f"abi.experiments.{claim}_stats lacks {sorted(missing)}"


@pytest.mark.parametrize("claim", CLAIMS)
def test_stats_reports_and_plotting_do_not_import_the_experiment(claim: str) -> None:
    experiment = f"abi.experiments.{claim}"
    for module in (f"{experiment}_stats", f"abi.reports.{claim}", f"abi.plotting.{claim}"):
        assert experiment not in _imported_modules(_source(module)), f"{module} imports {experiment}"


@pytest.mark.parametrize("claim", CLAIMS)
def test_plotting_does_not_import_reports(claim: str) -> None:
    reports = [m for m in _imported_modules(_source(f"abi.plotting.{claim}")) if m.startswith("abi.reports")]
    assert not reports, f"abi.plotting.{claim} imports {reports}"


# -- the committed result file ----------------------------------------------------------------------------
def _committed_result(claim: str) -> tuple[Path, dict[str, Any]]:
    path = REPO_ROOT / "results" / f"{claim}.json"
    if not path.is_file():
        pytest.skip(f"no committed {path.name}")
    return path, json.loads(path.read_text())


def _matches(derived: Any, stored: Any) -> bool:
    """Equal up to float rounding; a non-finite derived number is stored as None (JSON has no NaN)."""
    if isinstance(derived, float) and not math.isfinite(derived):
        return stored is None
    if isinstance(derived, dict):
        return (
            isinstance(stored, dict)
            and derived.keys() == stored.keys()
            and all(_matches(derived[k], stored[k]) for k in derived)
        )
    if isinstance(derived, (list, tuple)):
        return (
            isinstance(stored, list)
            and len(derived) == len(stored)
            and all(_matches(a, b) for a, b in zip(derived, stored))
        )
    if isinstance(derived, float):
        return isinstance(stored, (int, float)) and math.isclose(derived, stored, rel_tol=1e-9, abs_tol=1e-12)
    return derived == stored


@pytest.mark.parametrize("claim", CLAIMS)
def test_committed_result_rederives(claim: str) -> None:
    path, stored = _committed_result(claim)
    load_result(path)  # schema, every comparison and the registered deriver
    stats = importlib.import_module(f"abi.experiments.{claim}_stats")
    for section, value in stats.derive(stored).items():
        assert _matches(value, stored[section]), f"{claim}: {section} does not re-derive from the raw values"


def _first_number(value: Any, path: tuple = ()) -> tuple | None:
    """Where the first finite float of a nested section sits, as a key path."""
    if isinstance(value, float) and math.isfinite(value):
        return path
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        found = _first_number(child, (*path, key))
        if found is not None:
            return found
    return None


@pytest.mark.parametrize("claim", CLAIMS)
def test_tampered_derived_value_is_refused(claim: str, tmp_path: Path) -> None:
    _, stored = _committed_result(claim)
    stats = importlib.import_module(f"abi.experiments.{claim}_stats")
    section = next(name for name in stats.derive(stored) if _first_number(stored[name]) is not None)
    *parents, leaf = (section, *_first_number(stored[section]))
    target = stored
    for key in parents:
        target = target[key]
    target[leaf] += 0.5
    tampered = tmp_path / f"{claim}.json"
    tampered.write_text(json.dumps(stored))
    with pytest.raises(ResultFileError, match="does not match"):
        load_result(tampered)


# -- parameters -------------------------------------------------------------------------------------------
@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to load a backbone fails the test: bad parameters must be refused before that."""

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a model was loaded before the parameters were checked")

    for name, module in list(sys.modules.items()):
        if name == "abi" or name.startswith("abi."):
            for loader in ("load_backbone", "load_pretrained"):
                if hasattr(module, loader):
                    monkeypatch.setattr(module, loader, refuse)


@pytest.mark.parametrize("claim", CLAIMS)
def test_unknown_parameter_is_refused_by_name(claim: str, no_model_loads: None) -> None:
    with pytest.raises(ParameterError, match="unknown parameter 'no_such_parameter'"):
        CLAIM_MODULES[claim].validate("smoke", no_such_parameter=1)


def _bad_value(kind: str, name: str, value: Any) -> Any | None:
    """An out-of-range value for a parameter of this kind, or None when the parameter is of another kind."""
    if kind == "negative LR" and (name == "lr" or name.endswith("_lr")) and isinstance(value, float):
        return -abs(value)
    if kind == "zero windows" and name.endswith("_windows") and isinstance(value, int):
        return 0
    if kind == "duplicate seeds" and name.endswith("seeds") and isinstance(value, list) and value:
        return [value[0], value[0]]
    return None


@pytest.mark.parametrize("kind", ["negative LR", "zero windows", "duplicate seeds"])
@pytest.mark.parametrize("claim", CLAIMS)
def test_bad_value_is_refused_before_any_model_loads(claim: str, kind: str, no_model_loads: None) -> None:
    smoke = claim_profiles(claim)["smoke"]
    bad = {name: _bad_value(kind, name, value) for name, value in smoke.items()}
    bad = {name: value for name, value in bad.items() if value is not None}
    if not bad:
        pytest.skip(f"{claim} has no parameter of that kind")
    name, value = next(iter(bad.items()))
    with pytest.raises(ParameterError, match=f"'{name}'"):
        CLAIM_MODULES[claim].validate("smoke", **{name: value})


# -- the summary ------------------------------------------------------------------------------------------
def test_summary_states_each_chapters_verdict() -> None:
    from abi.pipeline import claim_of, notebook_names
    from abi.reports.summary import summary_table

    results_dir = REPO_ROOT / "results"
    expected = []
    for notebook in notebook_names():
        claim = claim_of(notebook)
        if claim in CLAIM_MODULES and (results_dir / f"{claim}.json").is_file():
            stats = importlib.import_module(f"abi.experiments.{claim}_stats")
            expected.append(stats.claim_verdict(load_result(results_dir / f"{claim}.json")))
    verdicts = summary_table(results_dir).groupby("claim", sort=False)["claim verdict"]
    assert (verdicts.nunique() == 1).all()  # one verdict per claim
    assert [verdict for verdict in verdicts.first() if verdict != "not testable here"] == expected


def test_reading_results_loads_no_experiment_code() -> None:
    """Reports, the summary and the verifier's checks import the statistics modules only: no claim's
    experiment module (models, training) and no transformers."""
    import subprocess
    import sys

    paths = [str(REPO_ROOT / "results" / f"{claim}.json") for claim in CLAIMS]
    script = "\n".join(
        [
            "import sys",
            "import abi.reports.summary",
            *(f"import abi.reports.{claim}" for claim in CLAIMS),
            "from abi.results import load_result",
            *(f"load_result({path!r})" for path in paths),
            "loaded = sorted(m for m in sys.modules if m.startswith('abi.experiments.') and not m.endswith('_stats'))",
            "assert not loaded and 'transformers' not in sys.modules, (loaded, 'transformers' in sys.modules)",
        ]
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO_ROOT)
