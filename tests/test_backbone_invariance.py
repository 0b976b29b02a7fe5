"""Claim 4 end to end on tiny models (decoder-only and encoder-decoder), its statistics, and bad input
refused before any long work."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from abi.backbones import TapIndexError, UnknownBackboneError, load_backbone
from abi.checkpoints import CheckpointError, load_module, save_module
from abi.data import CorpusTooShortError
from abi.experiments import backbone_invariance as claim
from abi.experiments import backbone_invariance_setup, backbone_invariance_training
from abi.experiments.backbone_invariance_evaluation import evaluate
from abi.experiments.backbone_invariance_setup import prepare
from abi.experiments.backbone_invariance_stats import efficacy, glue_values
from abi.experiments.backbone_invariance_training import check_zero_shot, module_record, train
from abi.module import ABIModule, ModuleConfig
from abi.plotting.backbone_invariance import plot_efficacy, plot_perplexities
from abi.reports.backbone_invariance import efficacy_table, perplexity_table, update_table, verdict_sentence
from abi.results import load_result, write_result
from abi.stats import paired_window_statistic_ci
from abi.train import TrainingDivergedError

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
    blocks = {}
    for name in params["backbones"]:
        setup = prepare(params, name)
        blocks[name] = evaluate(setup, train(setup))
    result = claim.build_result(params, blocks)
    return result, write_result(tmp_path_factory.mktemp("results") / "backbone_invariance.json", result)


def test_result_verifies_with_one_block_per_backbone(smoke_result: tuple[dict, Path]) -> None:
    loaded = load_result(smoke_result[1])
    assert set(loaded["backbones"]) == {"tiny-llama", "tiny-t5"}
    conditions = {"B/raw", "B/module", "B/fresh"} | {
        f"{u}/{k}" for u in ("plain", "protected") for k in ("raw", "zero_shot", "oracle")
    }
    for name, block in loaded["backbones"].items():
        assert set(block["windows"]["nll"]) == conditions
        assert set(loaded["summary"][name]["efficacy"]["plain"]) == {"ours", "original"}
        assert len(block["windows"]["n_tokens"]) == TINY["eval_windows"]
    assert loaded["backbones"]["tiny-t5"]["window_layout"]["layout"] == "prefix"
    assert set(loaded["comparisons"]) == {
        f"{n}/{u}/{k}" for n in ("tiny-llama", "tiny-t5") for u in ("plain", "protected") for k in ("module", "raw")
    }


def test_backbone_unchanged_and_updates_are_new_models(smoke_result: tuple[dict, Path]) -> None:
    for block in smoke_result[0]["backbones"].values():
        base = block["backbone"]  # B unchanged: the run itself refuses otherwise
        prints = {u["backbone"]["fingerprint"] for u in block["updates"].values()}
        assert len(prints) == 2 and base["fingerprint_before"] not in prints
        assert block["updates"]["protected"]["config"]["protect_weight"] > 0
        assert block["updates"]["plain"]["config"]["protect_weight"] == 0


def test_summaries_follow_from_raw_values(smoke_result: tuple[dict, Path]) -> None:
    result = smoke_result[0]
    for name, block in result["backbones"].items():
        windows, summary = block["windows"], result["summary"][name]
        n = sum(windows["n_tokens"])
        ppl = {c: math.exp(sum(v) / n) for c, v in windows["nll"].items()}
        for update in block["updates"]:
            for oracle, key in (("ours", f"{update}/oracle"), ("original", "B/fresh")):
                raw = ppl[f"{update}/raw"]
                expected = (raw - ppl[f"{update}/zero_shot"]) / (raw - ppl[key])
                assert summary["efficacy"][update][oracle]["estimate"] == pytest.approx(expected, rel=1e-9)
            flips = windows["negative_flips"][f"{update}/module"]
            right = windows["correct"]["B/module"]
            assert all(f <= r for f, r in zip(flips, right))
            rate = summary["negative_flip_rate"][update]["module"]["estimate"]
            assert rate == pytest.approx(sum(flips) / sum(right)) if sum(right) else math.isnan(rate)
        assert summary["prose_ppl"]["plain"]["estimate"] != summary["prose_ppl"]["B"]["estimate"]


def test_tables_and_figures_render(smoke_result: tuple[dict, Path], tmp_path: Path) -> None:
    result = load_result(smoke_result[1])
    published = efficacy_table(result).loc["published T5-large"].iloc[0]
    assert published["efficacy % (95% CI)"] == "304.3" and published["denominator (ppl) (95% CI)"] == "3.160"
    assert perplexity_table(result, "tiny-t5").index[0] == "raw B"
    assert list(update_table(result, "tiny-llama").index) == ["plain", "protected"]
    assert "tiny-llama" in verdict_sentence(result) and "304.3 % on T5-large" in verdict_sentence(result)
    assert plot_perplexities(result, tmp_path / "backbone_invariance_perplexity.png").is_file()
    assert plot_efficacy(result, tmp_path / "backbone_invariance_efficacy.png").is_file()


def test_glue_values_are_prefixed(smoke_result: tuple[dict, Path]) -> None:
    values = glue_values(smoke_result[0])
    assert all(key.startswith("c4_") for key in values)
    assert "c4_tiny_t5_efficacy_ours" in values and "c4_verdict" in values


# -- the statistics ------------------------------------------------------------------------------
def _synthetic(ppls: dict[str, float], n_windows: int = 40, tokens: int = 100, noise: float = 0.05, seed: int = 0):
    """Per-window NLL sums whose pooled perplexities are ``ppls`` (window noise shared + own)."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, noise, n_windows)
    nll = {}
    for name, ppl in ppls.items():
        per_token = math.log(ppl) + shared + rng.normal(0, noise / 5, n_windows)
        per_token += math.log(ppl) - per_token.mean()
        nll[name] = (per_token * tokens).tolist()
    return nll, [tokens] * n_windows


PARAMS = {"bootstrap": {"n_resamples": 1000, "seed": 0}, "ill_conditioned_fraction": 0.1, "pass_efficacy": 0.5}


def test_the_releases_own_numbers_are_ill_conditioned() -> None:
    nll, n = _synthetic({"plain/raw": 35.22, "plain/zero_shot": 25.61, "plain/oracle": 32.06})
    result = efficacy(nll, n, "plain", "plain/oracle", PARAMS)
    assert result["estimate"] == pytest.approx(9.61 / 3.16, rel=1e-3)  # 304 %, as published
    assert result["ill_conditioned"] and result["verdict"] == "ill-conditioned"
    assert result["point_pass"]  # the release's rule would pass it


def test_a_well_conditioned_efficacy_gets_a_verdict() -> None:
    nll, n = _synthetic({"plain/raw": 10.0, "plain/zero_shot": 6.5, "plain/oracle": 5.0}, noise=0.01)
    result = efficacy(nll, n, "plain", "plain/oracle", PARAMS)
    assert result["estimate"] == pytest.approx(0.7, rel=1e-3)
    assert not result["ill_conditioned"] and result["verdict"] == "PASS"
    assert result["denominator"]["low"] > 1.0


def test_paired_statistic_ci_resamples_windows_jointly() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(5, 1, 50)
    ci = paired_window_statistic_ci({"a": a, "b": a + 1.0}, lambda d: d["b"].mean(-1) - d["a"].mean(-1), seed=2)
    assert ci.estimate == pytest.approx(1.0) and ci.low == pytest.approx(1.0) and ci.high == pytest.approx(1.0)
    ratio = paired_window_statistic_ci(
        {"k": [1, 2, 0, 3], "n": [4, 4, 4, 4]}, lambda d: d["k"].sum(-1) / d["n"].sum(-1)
    )
    assert ratio.estimate == pytest.approx(6 / 16) and 0 <= ratio.low <= ratio.estimate <= ratio.high <= 0.75
    with pytest.raises(ValueError, match="unequal length"):
        paired_window_statistic_ci({"a": [1.0, 2.0], "b": [1.0]}, lambda d: d["a"].mean(-1))


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
        ({"backbones": ["tiny-llama", "gpt-17"]}, UnknownBackboneError, "Known names"),
        ({"backbones": []}, ValueError, "at least one backbone"),
        ({"taps": [3, 9]}, TapIndexError, r"layers 1\.\.4"),
        (
            {"backbone_overrides": {"tiny-t5": {"domain_steps": 0}}},
            ValueError,
            r"'domain_steps' of backbone_invariance \(backbone_overrides\['tiny-t5'\]\) must be at least 1",
        ),
        ({"backbone_overrides": {"tiny-t5": {"eval_split": "test"}}}, ValueError, "may override only"),
        ({"bootstrap_resamples": 50}, ValueError, "at least 100"),
        ({"updates": ["protected"]}, ValueError, "must include 'plain'"),
        ({"updates": ["plain", "lora"]}, ValueError, "only"),
        ({"protect_weight": 0.0}, ValueError, "protect_weight > 0"),
        ({"ill_conditioned_fraction": 1.5}, ValueError, "ill_conditioned_fraction"),
        ({"eval_split": "train"}, ValueError, "held out"),
        ({"train_split": "test"}, ValueError, "train_split"),
        ({"train_split": "validation", "eval_split": "validation"}, ValueError, "differ from eval_split"),
        ({"finetune_split": "test"}, ValueError, "finetune_split"),
        ({"window_len": 8}, ValueError, "window_len must be at least 32"),
    ],
)
def test_bad_parameters_fail_in_validate(overrides: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        claim.validate("smoke", **overrides)


def test_diverging_update_stops_and_leaves_results_untouched(tmp_path: Path, monkeypatch) -> None:
    previous = tmp_path / "backbone_invariance.json"
    previous.write_text('{"earlier": "result"}')
    params = claim.validate(
        "smoke", **{**TINY, "backbones": ["tiny-llama"], "updates": ["plain"], "finetune_steps": 4, "finetune_lr": 1e30}
    )
    setup = prepare(params, "tiny-llama")

    def no_more_work(*_args, **_kwargs):
        raise AssertionError("features were extracted for a diverged update")

    monkeypatch.setattr(backbone_invariance_training, "extract_features", no_more_work)
    with pytest.raises(TrainingDivergedError, match="lower the fine-tuning learning rate"):
        train(setup)
    assert previous.read_text() == '{"earlier": "result"}'


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"eval_windows": 10**6}, CorpusTooShortError, "windows"),
        ({"prose_eval_windows": 10**6}, CorpusTooShortError, "windows"),
    ],
)
def test_too_many_windows_fail_before_feature_extraction(
    overrides: dict, error: type, message: str, monkeypatch
) -> None:
    def no_long_work(*_args, **_kwargs):
        raise AssertionError("feature extraction started before the input was checked")

    monkeypatch.setattr(backbone_invariance_setup, "extract_features", no_long_work)
    with pytest.raises(error, match=message):
        prepare(claim.validate("smoke", **overrides), "tiny-llama")
