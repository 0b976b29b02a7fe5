"""The verifier: results re-derived from raw values, figures tied to the result they were drawn from."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from abi.plotting import save_figure
from abi.results import write_result
from abi.verify import require_verified, verify_results
from tests.test_results import synthetic_core_nib


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    result = synthetic_core_nib()
    result["provenance"] = {"git_commit": "x", "versions": {}, "python": "3.11", "machine": "m", "created": "t"}
    write_result(tmp_path / "core_nib.json", result)
    figure, axis = plt.subplots()
    axis.plot([0, 1])
    stored = json.loads((tmp_path / "core_nib.json").read_text())
    save_figure(figure, tmp_path / "figures" / "core_nib_arms.png", stored)
    return tmp_path


def test_consistent_results_and_figures_verify(results_dir: Path) -> None:
    findings = verify_results(results_dir)
    assert [f.path.name for f in findings] == ["core_nib.json", "core_nib_arms.png"]
    assert all(f.ok for f in findings)
    require_verified(results_dir)


def test_figure_of_an_edited_result_fails(results_dir: Path) -> None:
    path = results_dir / "core_nib.json"
    data = json.loads(path.read_text())
    data["profile"] = "cpu"  # a field that no derivation checks: only the figure stamp notices
    path.write_text(json.dumps(data))
    failures = [f for f in verify_results(results_dir) if not f.ok]
    assert len(failures) == 1 and "core_nib_arms.png" in failures[0].message
    assert "another version of core_nib.json" in failures[0].message


def test_truncated_result_names_the_file_and_stops_the_book(results_dir: Path) -> None:
    path = results_dir / "core_nib.json"
    path.write_text(path.read_text()[:500])
    with pytest.raises(SystemExit, match="core_nib.json: not valid JSON"):
        require_verified(results_dir)


def test_tampered_number_names_the_field(results_dir: Path) -> None:
    path = results_dir / "core_nib.json"
    data = json.loads(path.read_text())
    data["comparisons"]["ceiling"]["summary"]["top5"] += 0.01
    path.write_text(json.dumps(data))
    message = next(f.message for f in verify_results(results_dir) if not f.ok)
    assert "comparisons.ceiling.summary" in message


def test_missing_provenance_field_is_named(results_dir: Path) -> None:
    path = results_dir / "core_nib.json"
    data = json.loads(path.read_text())
    del data["provenance"]["git_commit"]
    path.write_text(json.dumps(data))
    message = next(f.message for f in verify_results(results_dir) if not f.ok)
    assert "provenance lacks ['git_commit']" in message


def test_orphan_figure_fails(results_dir: Path) -> None:
    (results_dir / "figures" / "core_nib_arms.png").rename(results_dir / "figures" / "mystery_plot.png")
    message = next(f.message for f in verify_results(results_dir) if not f.ok)
    assert "mystery_plot.png: no result file" in message
