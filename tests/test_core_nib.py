"""Claim 1 end to end on tiny models, and bad input rejected before any long work.

What every claim shares (re-derivation, tampering, unknown and out-of-range parameters) is tested once,
in ``test_claim_contract.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from abi.backbones import TapIndexError, UnknownBackboneError
from abi.data import CorpusTooShortError
from abi.experiments import core_nib, core_nib_stats
from abi.results import load_result, write_result

TINY = {
    "n_train_windows": 16,
    "domain_steps": 4,
    "calibration_steps": 8,
    "candidate_seeds": [1, 2],
    "stat_windows": 6,
    "curve_every": 4,
    "curve_windows": 2,
}


@pytest.fixture(scope="module")
def smoke_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    params = core_nib.validate("smoke", **TINY)
    params["bootstrap"]["n_resamples"] = 200
    setup = core_nib.prepare(params)
    arms = core_nib.train_arms(setup)
    result = core_nib.build_result(setup, arms, core_nib.evaluate_arms(setup, arms))
    path = write_result(tmp_path_factory.mktemp("results") / "core_nib.json", result)
    return result, path


def test_result_verifies_from_raw_values(smoke_result: tuple[dict, Path]) -> None:
    result, path = smoke_result
    loaded = load_result(path)
    assert set(loaded["comparisons"]) == {
        "no_module", "ceiling",
        "candidate/1", "uncalibrated/1", "random_calibrated/1",
        "candidate/2", "uncalibrated/2", "random_calibrated/2",
    }
    assert loaded["official"]["candidate/1"]["per_window"]["n_positions"] == [512 - 20] * 5


def test_held_out_windows_come_from_test_split(smoke_result: tuple[dict, Path]) -> None:
    result = smoke_result[0]
    split = result["data"]["split"]["splits"]
    assert result["parameters"]["eval_split"] == "test"
    assert split["test"]["manifest_sha256"] != split["train"]["manifest_sha256"]


def test_calibration_reduces_distance_to_anchor(smoke_result: tuple[dict, Path]) -> None:
    result = smoke_result[0]
    for seed in ("1", "2"):
        js_cal = result["comparisons"][f"candidate/{seed}"]["summary"]["js"]
        js_uncal = result["comparisons"][f"uncalibrated/{seed}"]["summary"]["js"]
        assert js_cal < js_uncal


def test_no_module_floor_is_distinct_from_anchor(smoke_result: tuple[dict, Path]) -> None:
    assert smoke_result[0]["comparisons"]["no_module"]["summary"]["js"] > 0


def test_chapter_and_glue_state_the_claim_verdict(smoke_result: tuple[dict, Path]) -> None:
    from abi.reports.core_nib import verdict_sentence

    result = smoke_result[0]
    assert result["contrasts"].keys() == {"1", "2"}
    verdict = core_nib_stats.claim_verdict(result)
    values = core_nib_stats.glue_values(result)
    assert all(key.startswith("c1_") for key in values) and values["c1_verdict"] == verdict
    assert f"{verdict}.**" in verdict_sentence(result)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"protocol": "faq2"}, ValueError, "known"),
        ({"backbone": "gpt-17"}, UnknownBackboneError, "Known names"),
        ({"calibration_steps": 2}, ValueError, "at least 4"),
    ],
)
def test_bad_parameters_fail_in_validate(overrides: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        core_nib.validate("smoke", **overrides)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"candidate_taps": [3, 9]}, TapIndexError, r"layers 1\.\.4"),
        ({"stat_windows": 10**6}, CorpusTooShortError, "windows"),
    ],
)
def test_bad_setup_fails_before_feature_extraction(
    overrides: dict, error: type, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_long_work(*_args, **_kwargs):
        raise AssertionError("feature extraction started before the input was checked")

    monkeypatch.setattr(core_nib, "extract_features", no_long_work)
    with pytest.raises(error, match=message):
        core_nib.prepare(core_nib.validate("smoke", **overrides))
