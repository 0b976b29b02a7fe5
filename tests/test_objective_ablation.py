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
HIDDEN = [n for n, o in OBJECTIVES.items() if not o.needs_head]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    params = objective_ablation.validate("smoke", **TINY)
    params["bootstrap"]["n_resamples"] = 200
    setup = objective_ablation.prepare(params)
    arms = objective_ablation.train_arms(setup)
    scored = objective_ablation.evaluate_arms(setup, arms)
    result = objective_ablation.build_result(setup, arms, scored)
    path = write_result(tmp_path_factory.mktemp("results") / "objective_ablation.json", result)
    return setup, arms, result, path


def test_result_verifies_from_raw_values(pipeline) -> None:
    *_, path = pipeline
    loaded = load_result(path)
    expected = {"no_module", *(f"{n}/{s}" for n in [*OBJECTIVES, "uncalibrated"] for s in (1, 2))}
    assert set(loaded["comparisons"]) == expected
    assert loaded["official"] == {}
    assert loaded["comparisons"]["corr_mse/1"]["per_window"]["n_positions"] == [64 - 20] * 6
    assert "corr_mse" in loaded["comparisons"]["kl_logits/1"]["per_window"]  # held-out loss in common units


def test_lr_is_chosen_on_validation_windows_per_objective(pipeline) -> None:
    setup, _, result, _ = pipeline
    for name in OBJECTIVES:
        selection = result["sweep_selection"][name]
        lrs = [g["lr"] for g in selection["grid"]]
        assert set(TINY["lr_grid"]) <= set(lrs) and len(lrs) <= 3 and lrs == sorted(lrs)
        assert set(lrs) - set(TINY["lr_grid"]) <= {1.25e-3, 8e-2}  # one step past an edge, at the grid's ratio
        best = max(selection["grid"], key=lambda g: g["validation_top5"])["validation_top5"]
        chosen = next(g for g in selection["grid"] if g["lr"] == selection["best_lr"])
        assert chosen["validation_top5"] == best
        assert {r["lr"] for k, r in result["training"]["runs"].items() if k.startswith(f"{name}/")} == {
            selection["best_lr"]
        }
        for record in result["sweep"][name]:
            assert len(record["validation"]["top5"]) == TINY["validation_windows"]
        # The sweep ran on seed 1's candidate with seed 1's batches: its chosen run is seed 1's reported run.
        chosen = next(r for r in result["sweep"][name] if r["lr"] == selection["best_lr"])
        assert chosen["seed"] == 1 and result["training"]["runs"][f"{name}/1"]["losses"] == chosen["losses"]
    assert result["training"]["sweep_reused_as_seed"] == 1
    # Validation windows come from the validation split, the scored ones from the held-out test split.
    split = result["data"]["split"]["splits"]
    assert split["validation"]["manifest_sha256"] != split["test"]["manifest_sha256"]
    assert setup.curve.windows.content_hash() != setup.held_out.windows.content_hash()


def test_hidden_space_objectives_were_calibrated_without_the_backbone(pipeline) -> None:
    result = pipeline[2]
    for key, run in result["training"]["runs"].items():
        assert run["backbone_passed"] == OBJECTIVES[key.split("/")[0]].needs_head
    assert {n for n, c in result["cost"].items() if not c["backbone_passed"]} == set(HIDDEN)


def test_rolling_loss_matches_calibrate(pipeline) -> None:
    result = pipeline[2]
    for run in result["training"]["runs"].values():
        assert best_rolling_loss(run["losses"], TINY["rolling_window"]) == pytest.approx(
            run["best_rolling_loss_logged"], rel=1e-12
        )


def test_final_hidden_mse_coincides_with_corr_mse(pipeline) -> None:
    result = pipeline[2]
    for seed in (1, 2):
        a = result["comparisons"][f"corr_mse/{seed}"]["summary"]
        b = result["comparisons"][f"final_hidden_mse/{seed}"]["summary"]
        assert b["top5"] == pytest.approx(a["top5"], abs=0.02)
        assert b["corr_mse"] == pytest.approx(a["corr_mse"], rel=0.05)
    assert "final_hidden_mse" not in result["statements"]["corr_mse_best"]["rivals"]


def test_calibration_moves_candidates_toward_the_anchor(pipeline) -> None:
    groups = pipeline[2]["groups"]
    assert groups["corr_mse"]["corr_mse"]["estimate"] < groups["uncalibrated"]["corr_mse"]["estimate"]


def test_statements_are_answered(pipeline) -> None:
    statements = pipeline[2]["statements"]
    assert statements["kl"]["status"] == "run"
    assert statements["kl"]["verdict"] in {"confirmed", "refuted", "inconclusive"}
    assert statements["corr_mse_best"]["verdict"] in {"confirmed", "refuted", "inconclusive"}
    values = objective_ablation_stats.glue_values(pipeline[2])
    assert all(k.startswith("c3_") for k in values)
    assert values["c3_kl_verdict"] == statements["kl"]["verdict"]
    assert values["c3_verdict"] == objective_ablation_stats.claim_verdict(pipeline[2])


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r["sweep"]["kl_logits"][0]["validation"]["top5"].__setitem__(0, 0.999),
        lambda r: r["training"]["runs"]["corr_mse/1"]["losses"].__setitem__(-1, -5.0),
    ],
)
def test_tampering_with_the_sweep_or_the_losses_is_caught(pipeline, tmp_path: Path, edit) -> None:
    result = json.loads(pipeline[3].read_text())
    edit(result)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(result))
    with pytest.raises(ResultFileError, match="does not match"):
        load_result(path)


def test_official_protocol_section_when_asked(pipeline, tmp_path: Path) -> None:
    setup, arms, _, _ = pipeline
    small = copy.copy(setup)
    small.params = {**setup.params, "score_official": True, "objectives": ["corr_mse", "kl_logits"]}
    small.official = setup.held_out  # the code path of the official protocol, on small windows
    kept = ("corr_mse", "kl_logits")
    few = objective_ablation.Arms(
        anchor=arms.anchor,
        uncalibrated=arms.uncalibrated,
        runs={k: arms.runs[k] for k in kept},
        sweep={k: arms.sweep[k] for k in kept},
        logs={**arms.logs, "runs": {k: v for k, v in arms.logs["runs"].items() if k.split("/")[0] in kept}},
    )
    result = objective_ablation.build_result(small, few, objective_ablation.evaluate_arms(small, few))
    assert set(result["official"]) == set(result["comparisons"])
    load_result(write_result(tmp_path / "official.json", result))


def test_sweep_on_a_separate_seed_has_its_own_candidate_and_batches(pipeline) -> None:
    setup = copy.copy(pipeline[0])
    setup.params = {
        **setup.params,
        "objectives": ["corr_mse"],
        "candidate_seeds": [1],
        "sweep_seed": 7,
        "calibration_steps": 4,
        "lr_grid": [5e-3, 1e-2],
    }
    arms = objective_ablation.train_arms(setup)
    assert set(arms.logs["domain"]) == {"anchor", "candidate/1", "candidate/7"}
    assert arms.logs["sweep_reused_as_seed"] is None
    assert {r["seed"] for r in arms.sweep["corr_mse"]} == {1007}
    assert list(arms.logs["runs"]) == ["corr_mse/1"] and arms.logs["runs"]["corr_mse/1"]["seed"] == 1


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
        ({"objectives": ["corr_mse", "kl_raw"]}, r"unknown calibration objective 'kl_raw'; known objectives: corr_mse"),
        ({"objective_hyper": {"corr_mse": {"temperature": 2.0}}}, r"does not take \['temperature'\]"),
        ({"objective_hyper": {"kl_logits": {"temperature": -1.0}}}, "out of range"),
        ({"objectives": ["corr_mse"], "objective_hyper": {"kl_logits": {"temperature": 2.0}}}, "not among"),
        ({"objectives": ["kl_logits", "logit_mse"]}, "include 'corr_mse'"),
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
        objective_ablation.prepare(objective_ablation.validate("smoke", candidate_taps=[3, 9]))


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
        ):
            assert mine[key] == claim1[key]
    assert len(claim_profiles("objective_ablation")["cpu"]["candidate_seeds"]) >= 3
