"""Claim 2 end to end on tiny models, and bad input refused before any long work."""

from __future__ import annotations

from pathlib import Path

import pytest

from abi.backbones import TapIndexError, load_backbone
from abi.checkpoints import CheckpointError, save_module
from abi.experiments import cross_architecture as ca
from abi.experiments import cross_architecture_setup, cross_architecture_stats
from abi.experiments.cross_architecture_stats import ARMS
from abi.module import ABIModule, ModuleConfig
from abi.plotting.cross_architecture import plot_arms, plot_kd_curves
from abi.reports import cross_architecture as report
from abi.results import Stopwatch, load_result, write_result
from abi.shared_text import SentenceMismatchError, TokenizedSentences

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {
    "pairs": ["tiny-t5 -> tiny-llama"],
    "n_train_windows": 8,
    "source_domain_steps": 3,
    "native_domain_steps": 3,
    "seeds": [1, 2],
    "n_sentences": 24,
    "kd_steps": 3,
    "kd_positions": 8,
    "eval_windows": 4,
    "official_arms": ["migrated"],
    "source_eval_windows": 2,
    "bootstrap_resamples": 200,
}


@pytest.fixture(scope="module")
def smoke_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    params = ca.validate("smoke", **TINY)
    key, block = ca.run_pair(params, params["pairs"][0])
    result = ca.build_result(params, [block], [key], Stopwatch(), ca.zoo_facts(params))
    path = write_result(tmp_path_factory.mktemp("results") / "cross_architecture.json", result)
    return result, path


def test_result_verifies_with_every_arm(smoke_result: tuple[dict, Path]) -> None:
    result, path = smoke_result
    loaded = load_result(path)
    key = "tiny-t5->tiny-llama"
    expected = {f"{key}/{arm}" for arm in ("no_module", "ceiling")}
    expected |= {f"{key}/{arm}/{s}" for arm in ARMS if arm not in ("no_module", "ceiling") for s in (1, 2)}
    assert set(loaded["comparisons"]) == expected
    assert set(loaded["official"]) == {f"{key}/migrated/1", f"{key}/migrated/2"}
    assert loaded["official"][f"{key}/migrated/1"]["per_window"]["n_positions"] == [512 - 20] * 5
    assert loaded["verdicts"][key]["migrated_beats_random_module"] in ("yes", "mixed", "no", "worse")


def test_training_every_weight_changes_the_domain_part(smoke_result: tuple[dict, Path]) -> None:
    # The frozen arms' domain hashes and the backbones' fingerprints are checked by the run itself (it raises).
    hashes = smoke_result[0]["pairs"]["tiny-t5->tiny-llama"]["training"]["domain_hash"]
    assert not any(hashes[f"also_trained/{s}"] for s in (1, 2))


def test_sentences_come_from_train_and_evaluation_from_test(smoke_result: tuple[dict, Path]) -> None:
    result = smoke_result[0]
    block = result["pairs"]["tiny-t5->tiny-llama"]
    assert block["sentences"]["split"] == "train" and block["sentences"]["n"] == 24
    assert result["parameters"]["eval_split"] == "test"


def test_tables_and_figures_render(smoke_result: tuple[dict, Path], tmp_path: Path) -> None:
    result = load_result(smoke_result[1])
    key = result["pair_keys"][0]
    assert len(report.arm_table(result, key)) == len(ARMS) + 2
    assert "pooled over seeds" in report.contrast_table(result, key).columns
    assert key in report.verdict_sentence(result, key)
    assert cross_architecture_stats.glue_values(result)["c2_p1_pair"] == key
    assert plot_arms(result, tmp_path / "cross_architecture_arms.png").is_file()
    assert plot_kd_curves(result, tmp_path / "cross_architecture_kd.png").is_file()


# -- bad input, refused before any long work ------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"n_sentences": 1}, ValueError, "paired rows"),
        ({"eval_split": "train"}, ValueError, "held out"),
        ({"target_taps": [9]}, TapIndexError, r"layers 1\.\.4"),
        ({"pairs": ["tiny-t5 tiny-llama"]}, ValueError, "SOURCE -> TARGET"),
        ({"pairs": ["tiny-llama -> tiny-llama"]}, ValueError, "same model"),
        ({"train_split": "test"}, ValueError, "train_split"),
        ({"official_arms": ["best"]}, ValueError, "not arms"),
        ({"eval_window_len": 16}, ValueError, "skip=20"),
    ],
)
def test_bad_parameters_fail_in_validate(overrides: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        ca.validate("smoke", **overrides)


def test_source_and_target_must_come_together() -> None:
    with pytest.raises(ValueError, match="both"):
        ca.validate("smoke", source="tiny-t5")
    assert ca.validate("smoke", source="tiny-llama", target="tiny-gpt2")["pairs"] == ["tiny-llama -> tiny-gpt2"]


def test_source_module_of_another_architecture_is_refused(tmp_path: Path) -> None:
    llama = load_backbone("tiny-llama")
    module = ABIModule(ModuleConfig(64, 1, 32, per_tap_norm=False))
    files = [str(save_module(tmp_path / f"m{s}.safetensors", module, [4], llama)) for s in (1, 2)]
    with pytest.raises(CheckpointError, match="'llama' backbone"):
        ca.validate("smoke", source="tiny-t5", target="tiny-gpt2", source_modules=files)
    assert ca.validate("smoke", source="tiny-llama", target="tiny-gpt2", source_modules=files)["source_modules"]


def test_mismatched_sentences_fail_before_feature_extraction(monkeypatch: pytest.MonkeyPatch) -> None:
    real = cross_architecture_setup.tokenize_shared

    def drop_one_for_the_target(text, tokenizer, model):
        tokens = real(text, tokenizer, model)
        if model == "tiny-llama":
            tokens = TokenizedSentences(model, tokens.text_sha256, tokens.context_ids[1:], tokens.sentence_ids[1:])
        return tokens

    def no_long_work(*_args, **_kwargs):
        raise AssertionError("feature extraction started before the sentences were checked")

    monkeypatch.setattr(cross_architecture_setup, "tokenize_shared", drop_one_for_the_target)
    monkeypatch.setattr(cross_architecture_setup, "extract_features", no_long_work)
    params = ca.validate("smoke", **TINY)
    with pytest.raises(SentenceMismatchError, match="differ"):
        cross_architecture_setup.prepare_pair(params, params["pairs"][0])
