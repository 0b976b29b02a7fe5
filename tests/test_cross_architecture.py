"""Claim 2 end to end on tiny models: settings (pair x domain), the source gate, KD until plateau with
fair starts, the verified result file, tables and figures; and bad input refused before any training."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from abi.backbones import BackboneUnavailableError, TapIndexError, load_backbone, resolve_backbone
from abi.backbones.registry import GGUFChunk
from abi.checkpoints import CheckpointError, save_module
from abi.experiments import cross_architecture as ca
from abi.experiments import cross_architecture_setup, cross_architecture_stats
from abi.experiments.cross_architecture_stats import ARMS
from abi.module import ABIModule, ModuleConfig
from abi.plotting.cross_architecture import plot_arms, plot_gates, plot_kd_curves
from abi.reports import cross_architecture as report
from abi.results import load_result, write_result
from abi.shared_text import SentenceMismatchError, TokenizedSentences
from abi.verdicts import VERDICTS

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {
    "pairs": ["tiny-t5 -> tiny-llama"],
    "domains": ["python-dialect"],
    "n_train_windows": 8,
    "val_windows": 2,
    "domain_steps": 4,
    "domain_eval_every": 2,
    "seeds": [1, 2],
    "n_sentences": 24,
    "kd_steps": 4,
    "kd_eval_every": 2,
    "kd_positions": 8,
    "eval_windows": 4,
    "official_arms": ["migrated"],
    "source_eval_windows": 2,
    "bootstrap_resamples": 200,
}
KEY = "python-dialect: tiny-t5->tiny-llama"


@pytest.fixture(scope="module")
def smoke_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    params = ca.validate("smoke", **TINY)
    runs = {key: ca.run_setting(params, key, resume=False) for key in params["settings"]}
    result = ca.build_result(params, runs, ca.zoo_facts(params))
    path = write_result(tmp_path_factory.mktemp("results") / "cross_architecture.json", result)
    return result, path


def test_result_verifies_with_every_arm(smoke_result: tuple[dict, Path]) -> None:
    result, path = smoke_result
    loaded = load_result(path)
    assert list(loaded["settings"]) == [KEY] and loaded["parameters"]["correction_site"] == "after_final_norm"
    setting = loaded["settings"][KEY]
    expected = {"no_module", "ceiling"} | {
        f"{arm}/{s}" for arm in ARMS if arm not in ("no_module", "ceiling") for s in (1, 2)
    }
    assert set(setting["comparisons"]) == expected
    assert set(setting["official"]) == {"migrated/1", "migrated/2"}
    assert setting["official"]["migrated/1"]["per_window"]["n_positions"] == [512 - 20] * 5
    assert loaded["row_verdicts"][KEY] in VERDICTS and loaded["verdict"] in VERDICTS
    assert set(loaded["regime_gates"][KEY]) >= {"module_ppl_reduction", "bare_backbone_nib", "testable"}


def test_untestable_setting_gets_that_verdict(smoke_result: tuple[dict, Path]) -> None:
    result = smoke_result[0]
    if not result["regime_gates"][KEY]["testable"]:
        assert result["row_verdicts"][KEY] == "not testable in this regime"
        assert result["verdict"] == "not testable in this regime"


def test_a_rerun_reads_every_kd_arm_from_the_module_store(smoke_result: tuple[dict, Path]) -> None:
    """Recomputing a setting runs no KD again (every arm read from the store), and scores the same."""
    result, _ = smoke_result
    rerun = ca.run_setting(ca.validate("smoke", **TINY), KEY, resume=False).record
    kd = rerun["training"]["kd"]
    assert set(kd) == set(result["settings"][KEY]["training"]["kd"])
    assert all(log["from_cache"] and log["stage_s"] >= 0 for log in kd.values())
    assert rerun["comparisons"] == result["settings"][KEY]["comparisons"]
    # Which arms kept the source's domain part is checked on stored arms as on trained ones.
    assert rerun["training"]["domain_hash"] == result["settings"][KEY]["training"]["domain_hash"]


def test_kd_runs_record_curves_and_fair_starts(smoke_result: tuple[dict, Path]) -> None:
    setting = smoke_result[0]["settings"][KEY]
    starts = smoke_result[0]["setting_stats"][KEY]["kd_starts"]
    for log in setting["training"]["kd"].values():
        assert log["evaluations"][0]["step"] == 0 and log["best_step"] is not None
        assert len(log["losses"]) == log["steps_run"] <= 4
    # zero_proj_out: every interface-only KD arm starts at the bare target, so their step-0 losses agree
    step0 = [starts[f"{arm}/1"]["val_loss_step0"] for arm in ("migrated", "random_module", "random_init_kd")]
    assert max(step0) - min(step0) < 1e-6


def test_training_every_weight_changes_the_domain_part(smoke_result: tuple[dict, Path]) -> None:
    # The frozen arms' domain hashes and the backbones' fingerprints are checked by the run itself (it raises).
    # (a run the plateau rule rolled back to step 0 keeps its start, so only runs that kept a later step count)
    training = smoke_result[0]["settings"][KEY]["training"]
    moved = [s for s in (1, 2) if training["kd"][f"also_trained/{s}"]["best_step"] > 0]
    assert not any(training["domain_hash"][f"also_trained/{s}"] for s in moved)


def test_sentences_come_from_the_domain_train_split(smoke_result: tuple[dict, Path]) -> None:
    result = smoke_result[0]
    sentences = result["settings"][KEY]["sentences"]
    assert sentences["split"] == "train" and sentences["n"] == 24 and sentences["domain"] == "python-dialect"
    assert result["parameters"]["eval_split"] == "test"


def test_tables_and_figures_render(smoke_result: tuple[dict, Path], tmp_path: Path) -> None:
    result = load_result(smoke_result[1])
    assert len(report.arm_table(result, KEY)) == len(ARMS) + 2
    assert "pooled over seeds" in report.contrast_table(result, KEY).columns
    assert len(report.kd_table(result, KEY)) == 8
    assert len(report.gate_table(result)) == 1 and len(report.setup_table(result).columns) == 1
    assert result["verdict"] in report.verdict_paragraph(result)
    glued = cross_architecture_stats.glue_values(result)
    assert glued["c2_verdict"] == result["verdict"]
    assert glued["c2_python_dialect_tiny_t5_to_tiny_llama_verdict"] == result["row_verdicts"][KEY]
    assert report.summary_rows(result)[0]["verdict"] == result["row_verdicts"][KEY]
    for plot, name in ((plot_arms, "arms"), (plot_kd_curves, "kd"), (plot_gates, "gates")):
        assert plot(result, tmp_path / f"cross_architecture_{name}.png").is_file()


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
        ({"arms": ["migrated", "no_module"]}, ValueError, "random_module"),
        ({"domains": ["latin"]}, ValueError, "unknown domain"),
        ({"kd_start": "halfway"}, ValueError, "kd_start"),
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
        ca.validate("smoke", source="tiny-t5", target="tiny-gpt2", source_modules=files, domains=["python"])
    assert ca.validate("smoke", source="tiny-llama", target="tiny-gpt2", source_modules=files, domains=["python"])[
        "source_modules"
    ]


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
        cross_architecture_setup.prepare_setting(params, params["settings"][0])


def _chunked(name: str, **changes) -> object:
    return replace(resolve_backbone(name), **changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"chunks": (GGUFChunk("no-such-part==1.0", "no_such_part_module", "data/part01.bin"),)},
        {"gguf_sha256": "0" * 64},
    ],
    ids=["missing part", "foreign hash"],
)
def test_a_target_with_bad_chunks_is_refused_in_validate(
    changes: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A chunked target (Qwen) with a missing part or another assembled hash: a clear error naming the
    package and the expected hash, from validate, before any model loads or trains."""
    spec = resolve_backbone("qwen2.5-coder-0.5b")
    if "gguf_sha256" in changes:  # tiny stand-in parts, so the test joins bytes, not a 400 MB model
        part = tmp_path / "pkg" / "data" / "part01.bin"
        part.parent.mkdir(parents=True)
        part.write_bytes(b"not the model")
        monkeypatch.setattr("abi.backbones.loading.package_dir", lambda module, requirement: tmp_path / "pkg")
        changes = {**changes, "chunks": (GGUFChunk("stand-in-part==1.0", "stand_in", "data/part01.bin"),)}
    fake = replace(spec, **changes)
    monkeypatch.setattr(cross_architecture_setup, "resolve_backbone", lambda name: fake)
    monkeypatch.setattr(cross_architecture_setup, "cache_dir", lambda: tmp_path / "cache")

    def no_load(*_args, **_kwargs):
        raise AssertionError("a model was loaded before the chunks were checked")

    monkeypatch.setattr(ca, "load_backbone", no_load)
    expected = fake.gguf_sha256
    with pytest.raises(BackboneUnavailableError, match=expected) as error:
        ca.validate("smoke", source="tiny-llama", target="qwen2.5-coder-0.5b")
    assert fake.chunks[0].package in str(error.value)


def test_pairs_by_domain_chooses_which_pairs_run_in_a_domain() -> None:
    two = ["tiny-llama -> tiny-gpt2", "tiny-gpt2 -> tiny-llama"]
    params = ca.validate("smoke", pairs=two, pairs_by_domain={"python": ["tiny-gpt2 -> tiny-llama"]})
    assert [s.split(": ")[0] for s in params["settings"]] == ["python", "python-dialect", "python-dialect"]
    with pytest.raises(ValueError, match="pairs_by_domain"):
        ca.validate("smoke", pairs=two, pairs_by_domain={"prose": two})
    with pytest.raises(ValueError, match="must list some of pairs"):
        ca.validate("smoke", pairs=two, pairs_by_domain={"python": ["tiny-t5 -> tiny-llama"]})


def test_the_committed_setting_paragraphs_read_cleanly():
    """Each setting's paragraph opens an interval once: no "(a to b) (mean over ...)" pile-up."""
    from abi.paths import REPO_ROOT

    result = load_result(REPO_ROOT / "results" / "cross_architecture.json")
    for key in result["settings"]:
        sentence = report.setting_sentence(result, key)
        assert ") (" not in sentence, sentence
        assert "the mean over 3 seeds (NIB passes for" in sentence
