"""Claim 3 end to end on tiny models, and bad input rejected before any long work.

What every claim shares (re-derivation, tampering with a derived value, unknown and out-of-range
parameters) is tested once, in ``test_claim_contract.py``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from abi.backbones import TapIndexError
from abi.experiments import core_nib, objective_ablation, objective_ablation_stats
from abi.experiments.objective_ablation import PositionChunks
from abi.experiments.objective_ablation_stats import best_rolling_loss, next_lr, select_lr
from abi.objectives import OBJECTIVES
from abi.results import ResultFileError, load_result, write_result
from abi.verdicts import NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED, VERDICTS

TINY = {
    "n_train_windows": 16,
    "domain_steps": 4,
    "domain_eval_every": 2,
    "domain_val_windows": 2,
    # Four domain steps barely move a module started at zero: with the profile's plateau threshold the
    # anchor would be restored to its zero start and every correction (and corrMSE loss) would be 0.
    "proj_out_init": "xavier",
    "domain_min_delta": 0.0,
    "calibration_steps": 8,
    "rolling_window": 3,
    "lr_grid": [5e-3, 2e-2],
    "lr_sweep_extend": 1,
    "candidate_seeds": [1, 2],
    "validation_windows": 2,
    "stat_windows": 6,
}
SMOKE_OBJECTIVES = objective_ablation.validate("smoke")["objectives"]
HIDDEN = [n for n in SMOKE_OBJECTIVES if not OBJECTIVES[n].needs_head]
SWEPT = [n for n in SMOKE_OBJECTIVES if n != "kl_raw"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    params = objective_ablation.validate("smoke", **TINY)
    params["bootstrap"]["n_resamples"] = 200
    setup = objective_ablation.prepare(params, "python")
    arms = objective_ablation.train_arms(setup)
    runs = {setting: objective_ablation.run_setting(params, setting, resume=False) for setting in params["settings"]}
    result = objective_ablation.build_result(params, runs)
    path = write_result(tmp_path_factory.mktemp("results") / "objective_ablation.json", result)
    return setup, arms, load_result(path), path


def _python(result: dict) -> dict:
    return objective_ablation_stats.setting_view(result, "python")


def test_result_verifies_from_raw_values_in_every_setting(pipeline) -> None:
    result = pipeline[2]
    assert list(result["settings"]) == ["python", "python-dialect"]
    expected = {
        "no_module",
        "ceiling",
        *(f"{n}/{s}" for n in [*SMOKE_OBJECTIVES, "uncalibrated", "random_calibrated"] for s in (1, 2)),
    }
    for setting in result["settings"].values():
        assert set(setting["comparisons"]) == expected
        assert setting["official"] == {} and setting["correction_site"] == "after_final_norm"
        assert setting["comparisons"]["corr_mse/1"]["per_window"]["n_positions"] == [64 - 20] * 6
        assert "corr_mse" in setting["comparisons"]["kl_raw/1"]["per_window"]  # held-out loss in common units
    assert result["parameters"]["correction_site"] == "after_final_norm"


def test_gates_row_verdicts_and_verdict_are_stored_per_setting(pipeline) -> None:
    result = pipeline[2]
    assert set(result["regime_gates"]) == set(result["row_verdicts"]) == {"python", "python-dialect"}
    for setting, rows in result["row_verdicts"].items():
        assert set(rows) == {
            "corr_mse_passes",
            "kl_lower_corr_mse",
            "kl_lower_top5",
            "weighted_hurts",
            "logit_mse_far_worse",
        }
        assert set(rows.values()) <= set(VERDICTS)
        if not result["regime_gates"][setting]["testable"]:
            assert set(rows.values()) == {NOT_TESTABLE}
    assert result["verdict"] in VERDICTS
    assert objective_ablation_stats.claim_verdict(result) == result["verdict"]


def test_the_12_7_percent_compares_corr_mse_with_corr_mse(pipeline) -> None:
    view = _python(pipeline[2])
    record = view["sub_claims"]["kl_lower_corr_mse"]
    expected = [
        1
        - view["comparisons"][f"kl_raw/{s}"]["summary"]["corr_mse"]
        / view["comparisons"][f"corr_mse/{s}"]["summary"]["corr_mse"]
        for s in ("1", "2")
    ]
    assert record["interval"]["per_seed"] == pytest.approx(expected)
    assert record["verdict"] == (REPRODUCED if record["direction"] == "claimed" else NOT_REPRODUCED)


def test_raw_kl_runs_at_a_tenth_of_corr_mse_lr_without_a_sweep(pipeline) -> None:
    view = _python(pipeline[2])
    assert "kl_raw" not in view["sweep"]
    selection = view["lr_selection"]
    assert selection["kl_raw"]["best_lr"] == pytest.approx(selection["corr_mse"]["best_lr"] / 10)
    assert {r["lr"] for k, r in view["training"]["runs"].items() if k.startswith("kl_raw/")} == {
        selection["kl_raw"]["best_lr"]
    }
    # The random-module floor goes through corrMSE calibration at corrMSE's LR.
    assert {r["objective"] for r in view["training"]["random_calibration"].values()} == {"corr_mse"}
    assert {r["lr"] for r in view["training"]["random_calibration"].values()} == {selection["corr_mse"]["best_lr"]}


def test_domain_trained_modules_come_from_the_cache_the_second_time(pipeline) -> None:
    view = _python(pipeline[2])
    # The fixture prepared and trained "python" once before run_setting: every module was then read back.
    assert all(log["from_cache"] for log in view["training"]["domain"].values())
    assert set(view["training"]["domain"]) == {"anchor", "ceiling", "candidate/1", "candidate/2"}
    # The ceiling anchor (another seed) is its own entry, not the anchor read back.
    assert view["training"]["domain"]["anchor"]["losses"] != view["training"]["domain"]["ceiling"]["losses"]


def test_lr_is_chosen_on_validation_windows_per_objective(pipeline) -> None:
    setup, _, result, _ = pipeline
    view = _python(result)
    for name in SWEPT:
        selection = view["lr_selection"][name]
        lrs = [g["lr"] for g in selection["grid"]]
        assert set(TINY["lr_grid"]) <= set(lrs) and len(lrs) <= 3 and lrs == sorted(lrs)
        assert set(lrs) - set(TINY["lr_grid"]) <= {1.25e-3, 8e-2}  # one step past an edge, at the grid's ratio
        best = max(selection["grid"], key=lambda g: g["validation_top5"])["validation_top5"]
        chosen = next(g for g in selection["grid"] if g["lr"] == selection["best_lr"])
        assert chosen["validation_top5"] == best
        assert {r["lr"] for k, r in view["training"]["runs"].items() if k.startswith(f"{name}/")} == {
            selection["best_lr"]
        }
        for record in view["sweep"][name]:
            assert len(record["validation"]["top5"]) == TINY["validation_windows"]
        # The sweep ran on seed 1's candidate with seed 1's batches: its chosen run is seed 1's reported run.
        chosen = next(r for r in view["sweep"][name] if r["lr"] == selection["best_lr"])
        assert chosen["seed"] == 1 and view["training"]["runs"][f"{name}/1"]["losses"] == chosen["losses"]
    assert view["training"]["sweep_reused_as_seed"] == 1
    # Validation windows come from the validation split, the scored ones from the held-out test split.
    split = view["data"]["split"]["splits"]
    assert split["validation"]["manifest_sha256"] != split["test"]["manifest_sha256"]
    assert setup.curve.windows.content_hash() != setup.held_out.windows.content_hash()


def test_hidden_space_objectives_were_calibrated_without_the_backbone(pipeline) -> None:
    view = _python(pipeline[2])
    for key, run in view["training"]["runs"].items():
        assert run["backbone_passed"] == OBJECTIVES[key.split("/")[0]].needs_head
    assert {n for n, c in view["cost"].items() if not c["backbone_passed"]} == set(HIDDEN)


def test_rolling_loss_matches_calibrate(pipeline) -> None:
    view = _python(pipeline[2])
    for run in view["training"]["runs"].values():
        assert best_rolling_loss(run["losses"], TINY["rolling_window"]) == pytest.approx(
            run["best_rolling_loss_logged"], rel=1e-12
        )


def test_calibration_moves_candidates_toward_the_anchor(pipeline) -> None:
    groups = _python(pipeline[2])["groups"]
    assert groups["corr_mse"]["corr_mse"]["estimate"] < groups["uncalibrated"]["corr_mse"]["estimate"]


def test_glue_values_follow_the_stored_verdicts(pipeline) -> None:
    result = pipeline[2]
    values = objective_ablation_stats.glue_values(result)
    assert all(k.startswith("c3_") for k in values)
    assert values["c3_verdict"] == result["verdict"]
    assert values["c3_python_dialect_kl_lower_top5"] == result["row_verdicts"]["python-dialect"]["kl_lower_top5"]


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r["settings"]["python"]["sweep"]["logit_mse"][0]["validation"]["top5"].__setitem__(0, 0.999),
        lambda r: r["settings"]["python"]["training"]["runs"]["corr_mse/1"]["losses"].__setitem__(-1, -5.0),
        lambda r: r["row_verdicts"]["python"].__setitem__("kl_lower_top5", "reproduced"),
    ],
)
def test_tampering_with_the_sweep_or_the_losses_is_caught(pipeline, tmp_path: Path, edit) -> None:
    result = json.loads(pipeline[3].read_text())
    edit(result)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(result))
    with pytest.raises(ResultFileError, match="does not match"):
        load_result(path)


def test_sweep_on_a_separate_seed_has_its_own_candidate_and_batches(pipeline) -> None:
    setup = copy.copy(pipeline[0])
    setup.params = {
        **setup.params,
        "objectives": ["corr_mse", "kl_raw"],
        "candidate_seeds": [1],
        "sweep_seed": 7,
        "calibration_steps": 4,
        "lr_grid": [5e-3, 1e-2],
    }
    arms = objective_ablation.train_arms(setup)
    assert set(arms.logs["domain"]) == {"anchor", "ceiling", "candidate/1", "candidate/7"}
    assert arms.logs["sweep_reused_as_seed"] is None
    assert {r["seed"] for r in arms.sweep["corr_mse"]} == {1007}
    assert list(arms.logs["runs"]) == ["corr_mse/1", "kl_raw/1"] and arms.logs["runs"]["corr_mse/1"]["seed"] == 1


def test_sweep_extends_past_an_edge_optimum_only() -> None:
    def record(lr: float, top5: float) -> dict:
        return {"lr": lr, "losses": [1.0, 0.5], "validation": {"top5": [top5], "js": [0.1], "n_positions": [10]}}

    low = [record(5e-3, 0.90), record(1.5e-3, 0.95), record(1.5e-2, 0.80)]
    assert select_lr(low, 2)["best_lr"] == 1.5e-3 and select_lr(low, 2)["best_at_grid_edge"] == "low"
    assert next_lr(low, 2) == 4.5e-4
    inside = [*low, record(4.5e-4, 0.93)]
    assert select_lr(inside, 2)["best_at_grid_edge"] is None and next_lr(inside, 2) is None
    high = [record(1e-3, 0.5), record(1e-2, 0.9)]
    assert next_lr(high, 2) == 0.1
    assert next_lr([record(0.5, 0.1), record(0.9, 0.2)], 2) is None  # an LR of 1 or more is never tried
    tie = [record(1e-3, 0.9), record(1e-2, 0.9), record(1e-1, 0.5)]
    assert select_lr(tie, 2)["best_lr"] == 1e-3  # ties go to the lower LR


def test_position_chunks_are_slices_of_the_cached_windows(pipeline) -> None:
    setup = pipeline[0]
    chunks = PositionChunks(setup.train, 16)
    assert len(chunks) == len(setup.train) * 4
    taps, final, labels = chunks.batch(torch.tensor([5, 0, 5]))
    full_taps, full_final, full_labels = setup.train.batch(np.array([1, 0]))
    torch.testing.assert_close(taps[0], full_taps[0, 16:32])
    torch.testing.assert_close(final[1], full_final[1, 0:16])
    assert torch.equal(labels[2], full_labels[0, 16:32])
    per_window = torch.arange(len(setup.train) * 64).reshape(len(setup.train), 64, 1)
    assert chunks.chunk(per_window)[5, :, 0].tolist() == list(range(64 + 16, 64 + 32))
    with pytest.raises(ValueError, match="must divide"):
        PositionChunks(setup.train, 24)


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"objectives": ["corr_mse", "kl_rawer"]}, r"unknown calibration objective 'kl_rawer'; known objectives"),
        ({"objective_hyper": {"corr_mse": {"temperature": 2.0}}}, r"does not take \['temperature'\]"),
        ({"objective_hyper": {"kl_raw": {"temperature": -1.0}}}, "out of range"),
        ({"objectives": ["corr_mse"], "objective_hyper": {"kl_logits": {"temperature": 2.0}}}, "not among"),
        ({"objectives": ["kl_logits", "logit_mse"], "derived_lr": {}}, "include 'corr_mse'"),
        ({"objectives": ["corr_mse", "logit_mse"]}, r"derived_lr names 'kl_raw', which is not among"),
        ({"derived_lr": {"kl_raw": {"from": "kl_raw", "factor": 0.1}}}, "must be a swept objective"),
        ({"derived_lr": {"kl_raw": {"from": "corr_mse", "factor": 0}}}, r"factor'\] must be a number"),
        ({"lr_grid_overrides": {"kl_raw": [1e-3]}}, "whose LR is derived"),
        ({"settings": []}, "non-empty list"),
        ({"settings": ["python", "cobol"]}, "cobol"),
        ({"ceiling_seed": 0}, "ceiling_seed must differ"),
        ({"lr_grid": [1e-3, 2.0]}, r"learning rates in \(0, 1\)"),
        ({"lr_grid_overrides": {"kl_logits": []}}, "non-empty list"),
        ({"eval_split": "validation"}, "reserved for the LR sweep"),
        ({"chunk_len": 24}, "must divide the training window length 64"),
        ({"calibration_steps": 3}, "at least 4"),
        ({"protocol": "faq2"}, "known"),
    ],
)
def test_bad_parameters_fail_in_validate(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        objective_ablation.validate("smoke", **overrides)


def test_bad_taps_fail_before_feature_extraction(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_long_work(*_args, **_kwargs):
        raise AssertionError("feature extraction started before the input was checked")

    monkeypatch.setattr(core_nib, "extract_features", no_long_work)
    with pytest.raises(TapIndexError, match=r"layers 1\.\.4"):
        objective_ablation.prepare(objective_ablation.validate("smoke", candidate_taps=[3, 9]), "python")


def test_profiles_share_claim_1_set_up() -> None:
    from abi.profiles import claim_profiles

    for profile in ("smoke", "cpu", "paper"):
        mine, claim1 = claim_profiles("objective_ablation")[profile], claim_profiles("core_nib")[profile]
        for key in (
            "backbone",
            "anchor_taps",
            "candidate_taps",
            "anchor_bottleneck",
            "candidate_bottleneck",
            "domain_steps",
            "domain_lr",
            "anchor_seed",
            "ceiling_seed",
        ):
            assert mine[key] == claim1[key]
    cpu = claim_profiles("objective_ablation")["cpu"]
    assert len(cpu["candidate_seeds"]) >= 3 and cpu["settings"] == ["python", "python-dialect"]
    assert "final_hidden_mse" not in cpu["objectives"] and cpu["derived_lr"]["kl_raw"]["factor"] == 0.1
