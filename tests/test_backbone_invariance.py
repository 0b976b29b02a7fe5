"""Claim 4 end to end on a tiny model (two settings, a seed grid, both update arms), both efficacy
formulas against the release's own numbers, the gates, and bad input refused before any long work."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from abi.backbones import TapIndexError, UnknownBackboneError, load_backbone
from abi.checkpoints import CheckpointError, load_module, save_module
from abi.data import CorpusTooShortError
from abi.experiments import backbone_invariance as claim
from abi.experiments import backbone_invariance_setup
from abi.experiments.backbone_invariance_stats import (
    PUBLISHED,
    derive,
    faq_efficacy,
    glue_values,
    release_code_efficacy,
    update_gates,
)
from abi.experiments.backbone_invariance_training import check_zero_shot, module_record
from abi.module import ABIModule, ModuleConfig
from abi.plotting.backbone_invariance import plot_efficacy, plot_perplexities
from abi.reports.backbone_invariance import (
    efficacy_table,
    gate_table,
    perplexity_table,
    summary_rows,
    update_table,
    verdict_sentence,
)
from abi.results import check_result, load_result, write_result
from abi.train import TrainingDivergedError
from abi.verdicts import VERDICTS

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {
    "n_train_windows": 8,
    "eval_windows": 6,
    "domain_steps": 3,
    "finetune_steps": 2,
    "prose_eval_windows": 4,
    "bootstrap_resamples": 200,
}


@pytest.fixture(scope="module")
def smoke_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    params = claim.validate("smoke", **TINY)
    shared = claim.prepare_shared(params)
    runs = {name: claim.run_setting(shared, name, resume=False) for name in params["settings"]}
    result = claim.build_result(shared, runs)
    return result, write_result(tmp_path_factory.mktemp("results") / "backbone_invariance.json", result)


def test_result_verifies_with_settings_gates_and_verdicts(smoke_result: tuple[dict, Path]) -> None:
    result, path = smoke_result
    loaded = load_result(path)
    check_result(loaded)
    assert set(loaded["settings"]) == {"python", "python-dialect"}
    assert loaded["parameters"]["correction_site"] == "after_final_norm"
    assert all(s["correction_site"] == "after_final_norm" for s in loaded["settings"].values())
    assert loaded["verdict"] in VERDICTS and all(v in VERDICTS for v in loaded["row_verdicts"].values())
    assert loaded["resources"]["peak_rss_mib"] > 0 and loaded["resources"]["wall_s"] > 0  # the appendix's memory cell
    for name, gate in loaded["regime_gates"].items():
        assert set(gate) == {"module_ppl_reduction", "bare_backbone_nib", "testable"}
        assert set(loaded["update_gates"][name]) == {"plain", "protected"}


def test_a_rerun_reads_every_module_from_the_store(smoke_result: tuple[dict, Path]) -> None:
    """Recomputing a setting trains no module again (modules on B and every oracle), and scores the same."""
    result, _ = smoke_result
    params = claim.validate("smoke", **TINY)
    rerun = claim.run_setting(claim.prepare_shared(params), "python", resume=False).record
    stored = rerun["stored_modules"]
    assert set(stored) == set(result["settings"]["python"]["stored_modules"])
    assert any(label.startswith("fresh module on plain update") for label in stored)
    assert all(entry["from_cache"] and entry["stage_s"] >= 0 for entry in stored.values())
    assert rerun["nll"] == result["settings"]["python"]["nll"]
    assert rerun["cells"] == result["settings"]["python"]["cells"]


def test_seed_grid_and_shared_plain_updates(smoke_result: tuple[dict, Path]) -> None:
    result, _ = smoke_result
    params = result["parameters"]
    python, dialect = result["settings"]["python"], result["settings"]["python-dialect"]
    assert len(python["cells"]["plain"]) == len(params["update_seeds"]) * len(params["module_seeds"])
    assert len(python["cells"]["protected"]) == len(params["protected_update_seeds"]) * len(
        params["protected_module_seeds"]
    )
    for u in params["update_seeds"]:  # the plain update does not depend on the domain: one backbone per seed
        assert python["updates"][f"plain/{u}"]["key"] == dialect["updates"][f"plain/{u}"]["key"]
    protected = python["updates"][f"protected/{params['update_seeds'][0]}/{params['protected_module_seeds'][0]}"]
    assert protected["config"]["protect_target"] == "module" and protected["config"]["protect_module_sha256"]
    assert result["backbone"]["unchanged"]


def test_summaries_follow_from_raw_values(smoke_result: tuple[dict, Path]) -> None:
    result, _ = smoke_result
    recomputed = derive(result)
    assert recomputed["verdict"] == result["verdict"] and recomputed["row_verdicts"] == result["row_verdicts"]
    tampered = {**result, "settings": {k: dict(v) for k, v in result["settings"].items()}}
    tampered["settings"]["python"]["nll"] = {
        k: [x * 1.5 for x in v] if k == "B/raw" else v for k, v in result["settings"]["python"]["nll"].items()
    }
    assert (
        derive(tampered)["setting_stats"]["python"]["ppl"]["B/raw"] != result["setting_stats"]["python"]["ppl"]["B/raw"]
    )


def test_tables_and_figures_render(smoke_result: tuple[dict, Path], tmp_path: Path) -> None:
    result = load_result(smoke_result[1])  # the chapter draws from the written file
    assert len(gate_table(result)) == 2
    for name in result["settings"]:
        assert len(update_table(result, name)) and len(perplexity_table(result, name))
    assert len(efficacy_table(result)) == 2 * 2 * 2 * 2 + 3
    assert "Verdict at the `smoke` profile" in verdict_sentence(result)
    assert len(summary_rows(result)) == 2
    for plot, stem in ((plot_perplexities, "perplexity"), (plot_efficacy, "efficacy")):
        assert plot(result, tmp_path / f"backbone_invariance_{stem}.png").stat().st_size > 0


def test_glue_values_are_prefixed(smoke_result: tuple[dict, Path]) -> None:
    values = glue_values(smoke_result[0])
    assert all(key.startswith("c4_") for key in values)
    assert values["c4_verdict"] == smoke_result[0]["verdict"]
    assert "c4_python_dialect_efficacy_ours_faq" in values and "c4_python_efficacy_original_release_code_low" in values


# -- the release's formulas and the gates ------------------------------------------------------------
def test_both_efficacy_formulas_reproduce_the_releases_numbers() -> None:
    gpt2, t5 = PUBLISHED["gpt2-medium"], PUBLISHED["t5-large"]
    code = release_code_efficacy(
        gpt2["raw_ppl"], gpt2["zero_shot_ppl"], gpt2["oracle_baseline_ppl"], gpt2["oracle_ppl"]
    )
    assert code == pytest.approx(0.653, abs=0.001)  # the release's 65.3 % (inputs rounded to 2 decimals)
    assert faq_efficacy(gpt2["raw_ppl"], gpt2["zero_shot_ppl"], gpt2["oracle_ppl"]) == pytest.approx(0.563, abs=0.001)
    assert faq_efficacy(t5["raw_ppl"], t5["zero_shot_ppl"], t5["oracle_ppl"]) == pytest.approx(3.043, abs=0.003)
    # with one shared baseline (our oracle on B') the two formulas agree
    assert release_code_efficacy(30.0, 20.0, 30.0, 10.0) == pytest.approx(faq_efficacy(30.0, 20.0, 10.0))


def test_update_gate_needs_lower_prose_and_a_ten_percent_domain_change() -> None:
    n = [10, 10]

    def setting(raw_after: float, prose_after: float) -> dict:
        nll = lambda ppl: [math.log(ppl) * 10] * 2  # noqa: E731 - per-window NLL of a pooled perplexity
        return {
            "windows": {"n_tokens": n},
            "nll": {"B/raw": nll(20.0)},
            "prose": {"n_tokens": n, "nll": {"B": nll(30.0), "plain/0": nll(prose_after)}},
            "cells": {"plain": {"0/0": {"raw": nll(raw_after)}}},
        }

    assert update_gates(setting(23.0, 25.0), 0.1)["plain"]["testable"]
    assert not update_gates(setting(21.0, 25.0), 0.1)["plain"]["testable"]  # 5 %: did not move the domain
    assert not update_gates(setting(30.0, 31.0), 0.1)["plain"]["testable"]  # prose got worse: did not take


# -- refusals ---------------------------------------------------------------------------------------
def _record(backbone, d_model=None, taps=(3, 4)):
    module = ABIModule(ModuleConfig(d_model or backbone.d_model, len(taps), 8), seed=0)
    return module_record(module, taps, backbone)


def test_module_for_another_architecture_is_refused(tiny_llama) -> None:
    gpt2 = load_backbone("tiny-gpt2")
    assert gpt2.d_model == tiny_llama.d_model  # same width: only the architecture differs
    with pytest.raises(CheckpointError, match="same architecture"):
        check_zero_shot(_record(tiny_llama), gpt2)


def test_module_for_another_width_is_refused(tiny_llama, tmp_path) -> None:
    record = _record(tiny_llama, d_model=32)
    with pytest.raises(CheckpointError, match="d_model=32"):
        check_zero_shot(record, tiny_llama)
    path = save_module(tmp_path / "m.safetensors", ABIModule(ModuleConfig(32, 2, 8)), [3, 4], tiny_llama)
    _, loaded = load_module(path)
    with pytest.raises(CheckpointError, match="d_model=32"):
        check_zero_shot(loaded, tiny_llama)


def test_module_with_taps_beyond_the_model_is_refused(tiny_llama) -> None:
    record = dataclasses.replace(_record(tiny_llama), taps=(5, 6))
    with pytest.raises(CheckpointError, match="do not exist"):
        check_zero_shot(record, tiny_llama)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"backbone": "gpt-17"}, UnknownBackboneError, "Known names"),
        ({"settings": []}, ValueError, "non-empty list"),
        ({"settings": ["python@before_final_norm"]}, ValueError, "release's correction site only"),
        ({"settings": ["haskell"]}, ValueError, "unknown domain"),
        ({"taps": [3, 9]}, TapIndexError, r"layers 1\.\.4"),
        ({"module_seeds": [0, 0]}, ValueError, "without duplicates"),
        ({"protected_module_seeds": [7]}, ValueError, "subset of module_seeds"),
        ({"oracle_seed": 0}, ValueError, "oracle_seed"),
        ({"bootstrap_resamples": 50}, ValueError, "at least 100"),
        ({"updates": ["protected"]}, ValueError, "must include 'plain'"),
        ({"updates": ["plain", "lora"]}, ValueError, "only"),
        ({"protect_weight": 0.0}, ValueError, "protect_weight > 0"),
        ({"ill_conditioned_fraction": 1.5}, ValueError, "ill_conditioned_fraction"),
        ({"update_min_change": 0.0}, ValueError, "update_min_change"),
        ({"eval_split": "train"}, ValueError, "held out"),
        ({"train_split": "test"}, ValueError, "train_split"),
        ({"finetune_split": "test"}, ValueError, "finetune_split"),
        ({"window_len": 8}, ValueError, "window_len must be at least 32"),
        ({"eval_windows": 10**6}, CorpusTooShortError, "characters"),
    ],
)
def test_bad_parameters_fail_in_validate(overrides: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        claim.validate("smoke", **overrides)


def test_diverging_update_stops_before_any_setting(monkeypatch) -> None:
    params = claim.validate(
        "smoke",
        **{**TINY, "finetune_steps": 4, "finetune_lr": 1e30, "update_seeds": [99], "protected_update_seeds": [99]},
    )
    monkeypatch.setattr(backbone_invariance_setup, "extract_features", lambda *a, **k: pytest.fail("extracted"))
    with pytest.raises(TrainingDivergedError, match="lower the fine-tuning learning rate"):
        claim.prepare_shared(params)


def test_too_many_prose_windows_fail_before_any_update(monkeypatch) -> None:
    monkeypatch.setattr(backbone_invariance_setup, "finetune_backbone", lambda *a, **k: pytest.fail("updated"))
    with pytest.raises(CorpusTooShortError, match="windows"):
        claim.prepare_shared(claim.validate("smoke", prose_eval_windows=10**6))


def test_protected_update_seeds_must_be_update_seeds() -> None:
    with pytest.raises(ValueError, match="protected_update_seeds"):
        claim.validate("smoke", protected_update_seeds=[7])
