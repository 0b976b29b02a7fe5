"""Claim 1 end to end on tiny models in three settings, tampering refused, and bad input rejected before any
long work.

What every claim shares (re-derivation, tampering, unknown and out-of-range parameters) is tested once,
in ``test_claim_contract.py``; this file covers what is claim 1's own: settings (domain x correction
site), regime gates, row verdicts, effect positions, the dose-response and the plateau rule.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from abi.backbones import TapIndexError, UnknownBackboneError
from abi.data import CorpusTooShortError
from abi.dialect import DialectError
from abi.experiments import core_nib, core_nib_stats
from abi.results import (
    SEAL_FIELD,
    ResultFileError,
    check_result,
    check_seal,
    content_hash,
    load_result,
    perplexity_from,
    write_result,
)
from abi.verdicts import (
    MIXED,
    NOT_DISCRIMINATIVE,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    REPRODUCED,
    combine,
    gated,
    nib_row_verdict,
    regime_gate,
)

SETTINGS = ["python", "python-dialect", "python-dialect@before_final_norm"]
PRE_NORM = "python-dialect@before_final_norm"
RELEASE_SETTINGS = ["python", "python-dialect"]
TINY: dict[str, Any] = {
    "settings": SETTINGS,
    "dose_settings": ["python-dialect"],
    "n_train_windows": 16,
    "domain_steps": 4,
    "domain_eval_every": 2,
    "domain_val_windows": 2,
    "domain_min_delta": 0.0,  # keep every improvement: the best evaluated state is the lowest validation loss
    # The release's random start: with the zero start and four steps every module stays next to the bare
    # backbone, and eight calibration steps overshoot the anchor's tiny corrections instead of reaching them.
    "proj_out_init": "xavier",
    "calibration_steps": 8,
    "dose_calibration_steps": 4,
    "dose_windows": [2, 4],
    "dose_eval_windows": 3,
    "candidate_seeds": [1, 2],
    "site_arm_seeds": [1],
    "stat_windows": 6,
    "curve_every": 4,
    "curve_windows": 2,
    "bootstrap_resamples": 200,
}
RELEASE_ARMS = {
    "no_module",
    "ceiling",
    "candidate/1",
    "uncalibrated/1",
    "random_calibrated/1",
    "candidate/2",
    "uncalibrated/2",
    "random_calibrated/2",
}
PRE_NORM_ARMS = {"no_module", "ceiling", "candidate/1", "uncalibrated/1", "random_calibrated/1"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory, single_thread) -> tuple[dict, Path, dict]:
    """Claim 1 on the smoke profile in every setting, written and read back: (result, path, parameters)."""
    params = core_nib.validate("smoke", **TINY)
    runs = {setting: core_nib.run_setting(params, setting, resume=False) for setting in params["settings"]}
    result = core_nib.build_result(params, runs)
    path = write_result(tmp_path_factory.mktemp("results") / "core_nib.json", result)
    return load_result(path), path, params


@pytest.fixture
def result(smoke) -> dict:
    """A fresh copy of the smoke result, safe to edit."""
    return copy.deepcopy(smoke[0])


# -- the result file ----------------------------------------------------------------------------------------
def test_a_rerun_reads_every_stage_from_the_module_store(smoke) -> None:
    """Recomputing a setting (kept run ignored) trains nothing: domain stages and calibrations come from
    the store, and every score is the same."""
    result, _, params = smoke
    rerun = core_nib.run_setting(params, "python", resume=False).record
    training = rerun["training"]
    assert all(log["from_cache"] for log in training["domain"].values())
    for kind in ("calibration", "random_calibration"):
        assert all(log["from_cache"] for log in training[kind].values())
    kept = result["settings"]["python"]
    assert json.loads(json.dumps(rerun["comparisons"], default=float)) == kept["comparisons"]
    assert json.loads(json.dumps(rerun["official"], default=float)) == kept["official"]


def test_result_has_every_setting_and_arm(smoke) -> None:
    result, path, _ = smoke
    assert result["schema_version"] == core_nib_stats.SCHEMA_VERSION == 2
    assert list(result["settings"]) == SETTINGS
    assert json.loads(path.read_text())[SEAL_FIELD] == result[SEAL_FIELD]
    for setting in RELEASE_SETTINGS:
        assert set(result["settings"][setting]["comparisons"]) == RELEASE_ARMS
        assert set(result["settings"][setting]["official"]) == RELEASE_ARMS
    assert set(result["settings"][PRE_NORM]["comparisons"]) == PRE_NORM_ARMS
    for setting in SETTINGS:
        official = result["settings"][setting]["official"]["candidate/1"]["per_window"]["n_positions"]
        assert official == [512 - 20] * 5
        held_out = result["settings"][setting]["comparisons"]["candidate/1"]["per_window"]["n_positions"]
        assert len(held_out) == TINY["stat_windows"]


def test_settings_record_their_domain_site_and_seeds(smoke) -> None:
    result, _, params = smoke
    settings = result["settings"]
    assert [(settings[s]["domain"], settings[s]["correction_site"]) for s in SETTINGS] == [
        ("python", "after_final_norm"),
        ("python-dialect", "after_final_norm"),
        ("python-dialect", "before_final_norm"),
    ]
    for setting in RELEASE_SETTINGS:
        assert settings[setting]["candidate_seeds"] == [1, 2]
        assert set(result["setting_stats"][setting]["contrasts"]) == {"1", "2"}
    # The pre-norm site is an arm: only the site_arm_seeds candidates are trained there.
    assert settings[PRE_NORM]["candidate_seeds"] == params["site_arm_seeds"] == [1]
    assert set(result["setting_stats"][PRE_NORM]["contrasts"]) == {"1"}
    assert set(settings[PRE_NORM]["training"]["domain"]) == {"anchor", "ceiling", "candidate/1"}
    assert set(settings[PRE_NORM]["training"]["calibration"]) == {"1"}


def test_held_out_windows_come_from_the_test_split_of_each_domain(smoke) -> None:
    result, _, params = smoke
    assert result["parameters"]["eval_split"] == "test"
    data = {setting: result["settings"][setting]["data"] for setting in SETTINGS}
    for setting in SETTINGS:
        splits = data[setting]["split"]["splits"]
        assert splits["test"]["manifest_sha256"] != splits["train"]["manifest_sha256"]
    # The dialect renames words, not files: same paths in the same splits, another corpus.
    assert data["python-dialect"]["split"]["splits"] == {
        name: {**split, "n_chars": data["python-dialect"]["split"]["splits"][name]["n_chars"]}
        for name, split in data["python"]["split"]["splits"].items()
    }
    assert data["python-dialect"]["corpus"]["sha256"] != data["python"]["corpus"]["sha256"]
    assert data["python-dialect"]["corpus"]["source_sha256"] == data["python"]["corpus"]["sha256"]
    dialect = data["python-dialect"]["corpus"]["dialect"]
    assert (dialect["n_words"], dialect["seed"]) == (params["dialect_words"], params["dialect_seed"])
    assert data[PRE_NORM] == data["python-dialect"]
    assert "dialect" not in data["python"]["corpus"]


def test_calibration_reduces_distance_to_anchor(smoke) -> None:
    result = smoke[0]
    for setting in SETTINGS:
        comparisons = result["settings"][setting]["comparisons"]
        for seed in result["settings"][setting]["candidate_seeds"]:
            js_cal = comparisons[f"candidate/{seed}"]["summary"]["js"]
            js_uncal = comparisons[f"uncalibrated/{seed}"]["summary"]["js"]
            assert js_cal < js_uncal, (setting, seed)


def test_no_module_floor_is_distinct_from_anchor(smoke) -> None:
    for setting in SETTINGS:
        assert smoke[0]["settings"][setting]["comparisons"]["no_module"]["summary"]["js"] > 0, setting


def test_effect_positions_are_scored_for_every_window(smoke) -> None:
    result = smoke[0]
    for setting in SETTINGS:
        for name, comparison in result["settings"][setting]["comparisons"].items():
            per_window, effect = comparison["per_window"], comparison["effect_per_window"]
            assert effect.keys() == per_window.keys(), (setting, name)
            assert all(len(values) == len(per_window["n_positions"]) for values in effect.values()), (setting, name)
            assert all(0 <= e <= n for e, n in zip(effect["n_positions"], per_window["n_positions"]))
        # Where the anchor's top-1 differs from the bare backbone's, the bare backbone never agrees with it.
        no_module = result["settings"][setting]["comparisons"]["no_module"]["effect_per_window"]
        assert no_module["top1"] == [0.0] * len(no_module["top1"])
        effect_nib = result["setting_stats"][setting]["effect_nib"]
        assert effect_nib.keys() == result["settings"][setting]["comparisons"].keys()
        if "summary" in effect_nib["no_module"]:
            assert effect_nib["no_module"]["summary"]["top1"] == 0.0
    # The pre-norm anchor's corrections move the top-1 somewhere: the effect positions are not all empty.
    assert sum(result["settings"][PRE_NORM]["comparisons"]["no_module"]["effect_per_window"]["n_positions"]) > 0


def test_dose_response_only_for_dose_settings(smoke) -> None:
    result, _, params = smoke
    dose = result["settings"]["python-dialect"]["dose_response"]
    expected = {f"{arm}/{d}/{s}" for arm in ("trained", "untrained") for d in (2, 4) for s in (1, 2)}
    assert set(dose) == expected | {"uncalibrated/1", "uncalibrated/2"}
    assert all(len(c["per_window"]["n_positions"]) == params["dose_eval_windows"] for c in dose.values())
    stats = result["setting_stats"]["python-dialect"]["dose_response"]
    assert set(stats["doses"]) == {"2", "4"}
    assert set(stats["doses"]["2"]) == {"trained", "untrained", "trained_minus_untrained", "verdicts"}
    for setting in ("python", PRE_NORM):
        assert result["settings"][setting]["dose_response"] == {}
        assert result["setting_stats"][setting]["dose_response"] == {}


def test_domain_stage_logs_the_plateau_rule(smoke) -> None:
    result, _, params = smoke
    every = params["domain_eval_every"]
    for setting in SETTINGS:
        training = result["settings"][setting]["training"]
        assert training["plateau_rule"]["every"] == every
        assert training["plateau_rule"]["patience"] == params["domain_patience"]
        assert training["plateau_rule"]["min_delta"] == params["domain_min_delta"]
        for log in training["domain"].values():
            steps = [e["step"] for e in log["evaluations"]]
            assert steps[0] == 0 and steps == sorted(steps)
            assert all(s % every == 0 or s == log["steps_run"] for s in steps)
            assert 1 <= log["steps_run"] <= params["domain_steps"] and len(log["losses"]) == log["steps_run"]
            assert log["best_step"] in steps
            best = min(log["evaluations"], key=lambda e: e["val_loss"])
            assert log["best_step"] == best["step"]  # min_delta 0: the lowest validation loss wins


# -- gates and verdicts ---------------------------------------------------------------------------------------
def test_regime_gates_follow_from_the_raw_values(smoke) -> None:
    result = smoke[0]
    assert set(result["regime_gates"]) == set(SETTINGS)
    for setting in SETTINGS:
        raw = result["settings"][setting]
        anchor_ppl = perplexity_from(raw["anchor_nll"]["held_out"])
        bare = raw["comparisons"]["no_module"]
        gate = result["regime_gates"][setting]
        assert gate == regime_gate(anchor_ppl, bare["summary"]["ppl"], bare["verdict"])
        assert gate["testable"] == (gate["module_ppl_reduction"] >= 0.25 and gate["bare_backbone_nib"] == "FAIL")


def test_row_verdicts_and_claim_verdict_follow_the_rules(smoke) -> None:
    result = smoke[0]
    for setting in SETTINGS:
        stats, seeds = result["setting_stats"][setting], result["settings"][setting]["candidate_seeds"]
        n_pass = sum(stats["verdicts"]["held_out_pass_per_seed"][str(s)] == "PASS" for s in seeds)
        beats = all(
            stats["contrasts"][str(s)][f"beats_{floor}"]["beats"]
            for s in seeds
            for floor in ("no_module", "uncalibrated", "random_calibrated")
        )
        expected = gated(result["regime_gates"][setting], nib_row_verdict(n_pass, len(seeds), beats))
        assert result["row_verdicts"][setting] == expected
        if not result["regime_gates"][setting]["testable"]:
            assert result["row_verdicts"][setting] == NOT_TESTABLE
    # The claim combines the settings at the release's site only; the pre-norm row is reported beside them.
    assert result["verdict"] == combine(result["row_verdicts"][s] for s in RELEASE_SETTINGS)
    assert core_nib_stats.claim_verdict(result) == result["verdict"]
    assert core_nib_stats.derive(result) == {
        key: result[key] for key in ("setting_stats", "regime_gates", "row_verdicts", "verdict")
    }


def test_chapter_tables_and_glue_state_the_stored_verdicts(smoke) -> None:
    from abi.reports.core_nib import arm_table, dose_table, official_table, regime_table, summary_rows, verdict_sentence

    result = smoke[0]
    verdict = core_nib_stats.claim_verdict(result)
    sentence = verdict_sentence(result)
    assert f": {verdict}**" in sentence
    for setting in SETTINGS:
        assert f"{result['row_verdicts'][setting]}.**" in sentence
    values = core_nib_stats.glue_values(result)
    assert all(key.startswith("c1_") for key in values) and values["c1_verdict"] == verdict
    assert values["c1_python_dialect_at_before_final_norm_verdict"] == result["row_verdicts"][PRE_NORM]
    assert values["c1_python_verdict"] == result["row_verdicts"]["python"]
    rows = summary_rows(result)
    assert [row["verdict"] for row in rows] == [result["row_verdicts"][s] for s in SETTINGS]
    assert list(regime_table(result)["verdict"]) == [result["row_verdicts"][s] for s in SETTINGS]
    assert len(official_table(result, PRE_NORM)) == 2  # one seed, and the published row
    assert "anchor itself" in arm_table(result, "python").index
    assert set(dose_table(result).index.get_level_values("calibration windows")) == {2, 4}
    with pytest.raises(KeyError, match="settings: python, python-dialect"):
        core_nib_stats.setting_view(result, "python@before_final_norm")


def test_finished_setting_is_resumed_without_any_work(smoke, monkeypatch: pytest.MonkeyPatch) -> None:
    result, _, params = smoke

    def no_work(*_args, **_kwargs):
        raise AssertionError("a finished setting was run again")

    monkeypatch.setattr(core_nib, "prepare", no_work)
    run = core_nib.run_setting(params, PRE_NORM)
    assert {k: v for k, v in run.record.items() if k != "timings"} == result["settings"][PRE_NORM]
    assert run.record["timings"] == result["timings"][PRE_NORM]
    assert run.backbone.correction_site == "before_final_norm"
    assert run.fingerprint_before == result["backbone"]["fingerprint_before"]


# -- tampering ------------------------------------------------------------------------------------------------
def _flip(verdict: str) -> str:
    return next(v for v in (REPRODUCED, NOT_REPRODUCED, NOT_DISCRIMINATIVE, MIXED, NOT_TESTABLE) if v != verdict)


def _effect_window(result: dict) -> tuple[str, int]:
    """A setting and window whose candidate/1 has at least two effect positions (an edit changes a weighted mean)."""
    for setting in (PRE_NORM, *RELEASE_SETTINGS):
        counts = result["settings"][setting]["comparisons"]["candidate/1"]["effect_per_window"]["n_positions"]
        for window, count in enumerate(counts):
            if count > 1:
                return setting, window
    raise AssertionError("no effect positions in any setting")


def _tamper_gate_testable(r: dict) -> None:
    r["regime_gates"]["python"]["testable"] = not r["regime_gates"]["python"]["testable"]


def _tamper_gate_reduction(r: dict) -> None:
    r["regime_gates"][PRE_NORM]["module_ppl_reduction"] += 0.01


def _tamper_gate_bare_nib(r: dict) -> None:
    gate = r["regime_gates"]["python-dialect"]
    gate["bare_backbone_nib"] = "PASS" if gate["bare_backbone_nib"] == "FAIL" else "FAIL"


def _tamper_row_verdict(r: dict) -> None:
    r["row_verdicts"][PRE_NORM] = _flip(r["row_verdicts"][PRE_NORM])


def _tamper_verdict(r: dict) -> None:
    r["verdict"] = _flip(r["verdict"])


def _tamper_effect_value(r: dict) -> None:
    setting, window = _effect_window(r)
    r["settings"][setting]["comparisons"]["candidate/1"]["effect_per_window"]["top5"][window] += 0.1


def _tamper_effect_count(r: dict) -> None:
    setting, window = _effect_window(r)
    effect = r["settings"][setting]["comparisons"]["candidate/1"]["effect_per_window"]
    effect["n_positions"][window] -= 1  # still within the window's scored positions: only re-derivation sees it


def _tamper_setting_stats(r: dict) -> None:
    r["setting_stats"]["python"]["groups"]["candidate"]["top5"]["estimate"] += 0.01


def _tamper_dose_stats(r: dict) -> None:
    r["setting_stats"]["python-dialect"]["dose_response"]["doses"]["2"]["trained"]["estimate"] += 0.01


def _tamper_anchor_nll(r: dict) -> None:
    r["settings"]["python"]["anchor_nll"]["held_out"]["sum"][0] *= 0.5


TAMPERS = {
    "gate testable": (_tamper_gate_testable, "regime_gates"),
    "gate reduction": (_tamper_gate_reduction, "regime_gates"),
    "gate bare nib": (_tamper_gate_bare_nib, "regime_gates"),
    "row verdict": (_tamper_row_verdict, "row_verdicts"),
    "verdict": (_tamper_verdict, "verdict"),
    "effect value": (_tamper_effect_value, "setting_stats"),
    "effect count": (_tamper_effect_count, "setting_stats"),
    "setting stats": (_tamper_setting_stats, "setting_stats"),
    "dose stats": (_tamper_dose_stats, "setting_stats"),
    "anchor nll": (_tamper_anchor_nll, "setting_stats"),
}


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_tampered_result_is_refused(result: dict, tamper: str) -> None:
    edit, section = TAMPERS[tamper]
    edit(result)
    with pytest.raises(ResultFileError, match=rf"r\.json: {section} does not match its value recomputed"):
        check_result(result, source="r.json")


@pytest.mark.parametrize("tamper", ["gate testable", "verdict", "effect value", "setting stats"])
def test_tampered_and_resealed_file_is_still_refused(smoke, tmp_path: Path, tamper: str) -> None:
    data = json.loads(smoke[1].read_text())
    edit, section = TAMPERS[tamper]
    edit(data)
    data[SEAL_FIELD] = content_hash(data)
    check_seal(data, "r.json")  # the seal alone would not notice
    path = tmp_path / "core_nib.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ResultFileError, match=rf"{section} does not match its value recomputed"):
        load_result(path)


def test_missing_derived_section_is_named(result: dict) -> None:
    del result["regime_gates"]
    with pytest.raises(ResultFileError, match="missing derived section 'regime_gates'"):
        check_result(result, source="r.json")


def test_result_of_the_old_schema_is_refused(result: dict) -> None:
    result["schema_version"] = 1
    with pytest.raises(ResultFileError, match="schema_version 1, expected 2"):
        check_result(result, source="r.json")


def test_tampered_nested_comparison_is_named(result: dict) -> None:
    result["settings"]["python-dialect"]["dose_response"]["trained/4/2"]["summary"]["top5"] += 0.01
    with pytest.raises(ResultFileError, match=r"settings\.python-dialect\.dose_response\.trained/4/2\.summary"):
        check_result(result, source="r.json")


# -- parameters and set-up ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("python", ("python", "after_final_norm")),
        ("python-dialect", ("python-dialect", "after_final_norm")),
        (PRE_NORM, ("python-dialect", "before_final_norm")),
    ],
)
def test_parse_setting(setting: str, expected: tuple[str, str]) -> None:
    assert core_nib.parse_setting(setting) == expected


def test_smoke_profile_runs_every_setting() -> None:
    params = core_nib.validate("smoke")
    assert params["settings"] == SETTINGS and params["dose_settings"] == ["python-dialect"]
    assert core_nib.setting_seeds(params, PRE_NORM) == params["site_arm_seeds"]
    assert core_nib.setting_seeds(params, "python") == params["candidate_seeds"]


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"protocol": "faq2"}, ValueError, "known"),
        ({"backbone": "gpt-17"}, UnknownBackboneError, "Known names"),
        ({"calibration_steps": 2}, ValueError, "at least 4"),
        ({"dose_calibration_steps": 3}, ValueError, "at least 4"),
        ({"settings": []}, ValueError, "non-empty list without duplicates"),
        ({"settings": ["python", "python"]}, ValueError, "non-empty list without duplicates"),
        ({"settings": ["python", "java"]}, ValueError, "valid domains: python, python-dialect"),
        ({"settings": ["python@after_the_head"]}, ValueError, "valid sites: after_final_norm, before_final_norm"),
        ({"settings": [PRE_NORM], "dose_settings": []}, ValueError, r"release's correction site \(after_final_norm\)"),
        ({"settings": ["python"]}, ValueError, r"dose_settings \['python-dialect'\] are not among settings"),
        ({"dose_windows": [0, 4]}, ValueError, r"distinct window counts in 1\.\.n_train_windows \(32\)"),
        ({"dose_windows": [4, 4]}, ValueError, r"distinct window counts in 1\.\.n_train_windows \(32\)"),
        ({"dose_windows": [33]}, ValueError, r"distinct window counts in 1\.\.n_train_windows \(32\)"),
        ({"dose_eval_windows": 17}, ValueError, r"dose_eval_windows must lie in 1\.\.stat_windows \(16\)"),
        ({"site_arm_seeds": [3]}, ValueError, r"must be a subset of candidate_seeds \[1, 2\]"),
        ({"proj_out_init": "normal"}, ValueError, "valid values: zero, xavier"),
        ({"domain_head_dtype": "float16"}, ValueError, "valid values: float32, bfloat16"),
        ({"dialect_words": -1}, DialectError, r"0\.\.2000"),
        ({"dialect_words": 2001}, DialectError, r"0\.\.2000"),
        ({"domain_patience": 0}, ValueError, "patience >= 1"),
        ({"domain_eval_every": 0}, ValueError, "every >= 1"),
        ({"domain_min_delta": -0.1}, ValueError, "min_delta >= 0"),
    ],
)
def test_bad_parameters_fail_in_validate(overrides: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        core_nib.validate("smoke", **overrides)


@pytest.mark.parametrize(
    ("setting", "overrides", "error", "message"),
    [
        ("python", {"candidate_taps": [3, 9]}, TapIndexError, r"layers 1\.\.4"),
        (PRE_NORM, {"anchor_taps": [0]}, TapIndexError, r"layers 1\.\.4"),
        ("python", {"stat_windows": 10**6}, CorpusTooShortError, "windows"),
        # Enough characters for validate's check, too few tokens: refused once the text is tokenized.
        ("python", {"stat_windows": 4000}, CorpusTooShortError, "non-overlapping windows"),
        ("python-dialect", {"domain_val_windows": 10**6}, CorpusTooShortError, "windows"),
    ],
)
def test_bad_setup_fails_before_feature_extraction(
    setting: str, overrides: dict, error: type, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_long_work(*_args, **_kwargs):
        raise AssertionError("feature extraction started before the input was checked")

    monkeypatch.setattr(core_nib, "extract_features", no_long_work)
    with pytest.raises(error, match=message):
        core_nib.prepare(core_nib.validate("smoke", **overrides), setting)
