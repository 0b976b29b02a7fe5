"""The verifier: every claim and figure the book uses is present, re-derived or sealed, and named correctly;
every problem is a FAIL line, never a traceback.

Each test tampers with a copy of the committed results. Re-deriving a result from its raw values is
deterministic, so the expensive part is memoised by content for the session: a tampered file is still
checked in full, an untouched one is not recomputed for every test.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

import abi.experiments
import abi.results
import abi.verify
from abi.claims import claim_modules, declared_figures
from abi.cli import main
from abi.paths import REPO_ROOT
from abi.plotting import NAME_STAMP, figure_stamps, save_figure
from abi.results import SEAL_FIELD, content_hash
from abi.verify import AUXILIARY, require_verified, verify_results

COMMITTED = REPO_ROOT / "results"
_MEMO: dict[str, str | None] = {}


def _memoised_check_result(result: dict, source: str = "<result>") -> None:
    """``check_result`` remembered per exact content; its message is re-addressed to each copy's path."""
    key = json.dumps(result, sort_keys=True)
    if key not in _MEMO:
        try:
            abi.results.check_result(result, "<source>")
            _MEMO[key] = None
        except abi.results.ResultFileError as error:
            _MEMO[key] = str(error)
    if _MEMO[key] is not None:
        raise abi.results.ResultFileError(_MEMO[key].replace("<source>", source))


@pytest.fixture
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the committed results and figures."""
    shutil.copytree(COMMITTED, tmp_path / "results", ignore=shutil.ignore_patterns(".*"))
    checks = tuple(_memoised_check_result if c is abi.results.check_result else c for c in abi.verify._CLAIM_CHECKS)
    monkeypatch.setattr(abi.verify, "_CLAIM_CHECKS", checks)
    return tmp_path / "results"


def _failures(results_dir: Path) -> list[str]:
    return [f.message for f in verify_results(results_dir) if not f.ok]


def _edit(path: Path, edit, reseal: bool = False) -> None:
    data = json.loads(path.read_text())
    edit(data)
    if reseal:
        data[SEAL_FIELD] = content_hash(data)
    path.write_text(json.dumps(data, indent=1) + "\n")


def _figures_of(claim: str) -> list[str]:
    return sorted(f"{stem}.png" for stem in declared_figures() if stem.startswith(f"{claim}_"))


def test_committed_results_verify(results_dir: Path) -> None:
    findings = verify_results(results_dir)
    assert [f.message for f in findings if not f.ok] == []
    names = {f.path.name for f in findings}
    assert {f"{claim}.json" for claim in claim_modules()} <= names
    assert {f"{stem}.png" for stem in declared_figures()} <= names
    require_verified(results_dir)


def test_declared_figures_are_the_ones_the_notebooks_show() -> None:
    shown = set()
    for notebook in (REPO_ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(notebook.read_text())["cells"]
        source = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        shown |= set(re.findall(r'figures / "([^"]+)\.png"', source))
    assert shown == set(declared_figures())
    owners = {*claim_modules(), *AUXILIARY}
    assert all(any(stem.startswith(f"{owner}_") for owner in owners) for stem in declared_figures())


def test_undeclared_figure_name_is_refused(tmp_path: Path) -> None:
    figure, _ = plt.subplots()
    with pytest.raises(ValueError, match="mystery.png: not a declared figure"):
        save_figure(figure, tmp_path / "mystery.png", {})
    assert not list(tmp_path.iterdir())


def test_figure_is_stamped_with_its_name(tmp_path: Path) -> None:
    figure, axis = plt.subplots()
    axis.plot([0, 1])
    path = save_figure(figure, tmp_path / "core_nib_arms.png", {"claim": "core_nib"})
    assert figure_stamps(path)[NAME_STAMP] == "core_nib_arms"


def test_missing_figure_fails(results_dir: Path) -> None:
    (results_dir / "figures" / "core_nib_arms.png").unlink()
    assert _failures(results_dir) == [
        f"{results_dir}/figures/core_nib_arms.png: missing; the book shows it "
        f"({declared_figures()['core_nib_arms']}): re-run the notebook that draws it."
    ]


def test_missing_claim_fails_and_its_figures_are_not_blamed(results_dir: Path) -> None:
    (results_dir / "cross_architecture.json").unlink()
    failures = _failures(results_dir)
    assert failures[0] == (
        f"{results_dir}/cross_architecture.json: missing; the book reads it: run "
        "notebooks/02_cross_architecture.ipynb (`make notebooks`)."
    )
    assert failures[1:] == [
        f"{results_dir}/figures/{name}: not checked: its result cross_architecture.json is missing."
        for name in _figures_of("cross_architecture")
    ]


def test_swapped_figures_of_one_claim_fail_naming_both(results_dir: Path) -> None:
    arms, calibration = (results_dir / "figures" / f"core_nib_{name}.png" for name in ("arms", "calibration"))
    arms_bytes = arms.read_bytes()
    arms.write_bytes(calibration.read_bytes())
    calibration.write_bytes(arms_bytes)
    failures = _failures(results_dir)
    assert len(failures) == 2, failures  # same claim, same result hash: only the name stamps tell
    assert f"{arms}: is the figure core_nib_calibration.png" in failures[0] and "core_nib_arms.png" in failures[0]
    assert f"{calibration}: is the figure core_nib_arms.png" in failures[1]


@pytest.mark.parametrize(
    "damage",
    [lambda data: data[: len(data) // 2], lambda data: b"\x89PNG\r\n\x1a\n" + bytes(300)],
    ids=["truncated", "garbage"],
)
def test_damaged_png_is_a_fail_line(results_dir: Path, damage) -> None:
    path = results_dir / "figures" / "objective_ablation_top5.png"
    path.write_bytes(damage(path.read_bytes()))
    failures = _failures(results_dir)
    assert len(failures) == 1 and failures[0].startswith(f"{path}: not a readable PNG")


def test_nan_in_a_result_is_a_fail_line(results_dir: Path) -> None:
    path = results_dir / "core_nib.json"
    text = path.read_text()
    path.write_text(text.replace('"anchor_nll": ', '"anchor_nll": NaN, "was": ', 1))
    failures = _failures(results_dir)
    assert failures[0].startswith(f"{path}: not valid JSON (NaN is not a number strict JSON allows)")
    assert all("not checked: its result core_nib.json failed" in f for f in failures[1:])
    assert len(failures) == 1 + len(_figures_of("core_nib"))


def test_removed_comparison_is_a_fail_line(results_dir: Path) -> None:
    path = results_dir / "backbone_invariance.json"
    _edit(path, lambda data: data["settings"]["python"]["nll"].pop(next(iter(data["settings"]["python"]["nll"]))))
    failures = _failures(results_dir)
    result_lines = [f for f in failures if f.startswith(f"{path}:")]
    assert result_lines and any("edited after it was written" in f for f in result_lines)
    assert len(failures) == len(result_lines) + 2 and all("not checked" in f for f in failures[len(result_lines) :])


@pytest.mark.parametrize(
    "edit",
    [
        lambda data: data["settings"]["python"]["data"]["tokens"].__setitem__("train", 1),
        lambda data: data["parameters"].__setitem__("stat_windows", data["parameters"]["stat_windows"] + 1),
        lambda data: data["published"]["official"].__setitem__("top5", 0.99),
    ],
    ids=["data identity", "parameters", "published"],
)
def test_edited_field_that_is_not_derived_is_a_result_edit(results_dir: Path, edit) -> None:
    path = results_dir / "core_nib.json"
    _edit(path, edit)
    failures = _failures(results_dir)
    assert any(f.startswith(f"{path}: edited after it was written") and "re-run its notebook" in f for f in failures)
    assert not any("another version" in f for f in failures), "an edited result must not be blamed on its figures"
    figures = [f for f in failures if "/figures/" in f]
    assert figures == [
        f"{results_dir}/figures/{name}: not checked: its result core_nib.json failed verification (see above)."
        for name in _figures_of("core_nib")
    ]


def test_published_must_equal_the_claim_modules_constant_even_when_resealed(results_dir: Path) -> None:
    path = results_dir / "objective_ablation.json"
    _edit(path, lambda data: data["published"].__setitem__("kl_top5_drop", 0.3), reseal=True)
    failures = [f for f in _failures(results_dir) if not f.startswith(f"{results_dir}/figures/")]
    assert failures == [
        f"{path}: field published differs from PUBLISHED in abi.experiments.objective_ablation_stats "
        "(the release's figures): edited, or the constant changed since the run; re-run its notebook."
    ]


def test_tampered_number_names_the_field(results_dir: Path) -> None:
    _edit(
        results_dir / "core_nib.json",
        lambda data: data["settings"]["python"]["comparisons"]["ceiling"]["summary"].__setitem__("top5", 0.5),
    )
    assert "settings.python.comparisons.ceiling.summary" in _failures(results_dir)[0]


def test_missing_provenance_field_is_named(results_dir: Path) -> None:
    _edit(results_dir / "core_nib.json", lambda data: data["provenance"].pop("git_commit"), reseal=True)
    assert any("provenance lacks ['git_commit']" in f for f in _failures(results_dir))


def test_orphan_figure_fails(results_dir: Path) -> None:
    shutil.copy(results_dir / "figures" / "core_nib_arms.png", results_dir / "figures" / "mystery_plot.png")
    assert _failures(results_dir) == [
        f"{results_dir}/figures/mystery_plot.png: no result file {{claim}}.json "
        "matches its name; delete it or re-run the notebook that draws it."
    ]


def test_truncated_result_names_the_file_and_stops_the_book(results_dir: Path) -> None:
    path = results_dir / "core_nib.json"
    path.write_text(path.read_text()[:500])
    with pytest.raises(SystemExit, match="core_nib.json: not valid JSON"):
        require_verified(results_dir)


def test_cli_prints_every_problem_and_exits_1(results_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (results_dir / "figures" / "core_nib_arms.png").unlink()
    (results_dir / "figures" / "benchmarks_memory.png").write_bytes(b"not a png")
    with pytest.raises(SystemExit) as stop:
        main(["verify", "--results-dir", str(results_dir)])
    assert stop.value.code == "2 problem(s) found; verification failed."  # a message: the process exits with 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("FAIL")] == [
        f"FAIL {results_dir}/figures/benchmarks_memory.png",
        f"FAIL {results_dir}/figures/core_nib_arms.png",
    ]
    assert sum(line.startswith("OK") for line in lines) == len(lines) - 2
