"""Tests of abi.features: window layouts and the on-disk tap-feature cache (hits, resume, keys)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from abi.backbones import load_backbone
from abi.features import IGNORE_INDEX, FeatureSet, Windows, extract_features

TAPS = [2, 4]

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def windows(random_ids) -> Windows:
    return Windows.causal(random_ids(10, 12, seed=3))


class BackboneCalled(AssertionError):
    pass


def _entries(root):
    """Cache entries under root: {'<backbone>/<key>', ...} (not their .lock files)."""
    return {f"{p.parent.name}/{p.name}" for p in root.glob("*/*") if p.is_dir()}


# -- window layouts --------------------------------------------------------------------------------
def test_causal_labels_are_the_next_token_with_ignore_at_the_end():
    tokens = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]], dtype=torch.int32)
    w = Windows.causal(tokens)
    assert w.input_ids.dtype == torch.long and w.labels.dtype == torch.long
    assert w.input_ids.tolist() == [[10, 11, 12, 13], [20, 21, 22, 23]]
    assert w.labels.tolist() == [[11, 12, 13, IGNORE_INDEX], [21, 22, 23, IGNORE_INDEX]]
    assert IGNORE_INDEX == -100
    assert w.encoder_ids is None
    assert len(w) == 2 and w.seq_len == 4
    assert w.select(slice(1, 2)).labels.tolist() == [[21, 22, 23, -100]]


def test_prefix_lm_layout_and_content_hash():
    enc = torch.tensor([[1, 2, 3]])
    dec = torch.tensor([[0, 4, 5]])
    labels = torch.tensor([[4, 5, 6]])
    w = Windows.prefix_lm(enc, dec, labels)
    assert w.encoder_ids.tolist() == [[1, 2, 3]] and w.input_ids.tolist() == [[0, 4, 5]]
    assert w.content_hash() == Windows.prefix_lm(enc, dec, labels).content_hash()
    assert w.content_hash() != Windows.prefix_lm(enc + 1, dec, labels).content_hash()
    assert w.content_hash() != Windows.prefix_lm(enc, dec, labels + 1).content_hash()


# -- extraction and the cache ----------------------------------------------------------------------
def test_extracted_features_equal_a_direct_backbone_call(tmp_path, tiny_llama, windows):
    features = extract_features(tiny_llama, windows, TAPS, batch_windows=4, root=tmp_path)
    assert isinstance(features, FeatureSet)
    assert len(features) == 10 and features.tap_layers == (2, 4)
    direct = tiny_llama.tap_features(windows.input_ids, TAPS)
    taps, final, labels = features.batch(slice(None))
    torch.testing.assert_close(taps, direct.taps, atol=1e-5, rtol=0)
    torch.testing.assert_close(final, direct.final, atol=1e-5, rtol=0)
    assert torch.equal(labels, windows.labels)
    assert features.directory.parent == tmp_path / "tiny-llama"
    meta = json.loads((features.directory / "meta.json").read_text())
    hashes = meta.pop("sha256")
    assert meta == {"backbone": "tiny-llama", "taps": [2, 4], "n_windows": 10, "seq_len": 12, "dtype": "float32"}
    assert sorted(hashes) == ["final.npy", "taps.npy"] and all(len(h) == 64 for h in hashes.values())
    assert not (features.directory / "progress.json").exists()


def test_second_call_is_a_cache_hit_without_the_backbone(tmp_path, tiny_llama, windows, monkeypatch):
    first = extract_features(tiny_llama, windows, TAPS, batch_windows=4, root=tmp_path)
    expected = first.batch(slice(None))

    def refuse(*args, **kwargs):
        raise BackboneCalled("the backbone ran on a cache hit")

    monkeypatch.setattr(tiny_llama, "tap_features", refuse)
    second = extract_features(tiny_llama, windows, TAPS, batch_windows=4, root=tmp_path)
    assert second.directory == first.directory and second.key == first.key
    for a, b in zip(second.batch(slice(None)), expected, strict=True):
        assert torch.equal(a, b)
    assert len(_entries(tmp_path)) == 1


def test_interrupted_extraction_resumes_and_matches_an_uninterrupted_run(tmp_path, tiny_llama, windows, monkeypatch):
    reference = extract_features(tiny_llama, windows, TAPS, batch_windows=4, root=tmp_path / "reference")
    ref_taps, ref_final, _ = reference.batch(slice(None))

    original = tiny_llama.tap_features
    calls: list[int] = []

    def crash_after_first_batch(input_ids, taps, encoder_ids=None):
        calls.append(int(input_ids.shape[0]))
        if len(calls) > 1:
            raise KeyboardInterrupt("simulated interruption")
        return original(input_ids, taps, encoder_ids=encoder_ids)

    root = tmp_path / "resumed"
    monkeypatch.setattr(tiny_llama, "tap_features", crash_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        extract_features(tiny_llama, windows, TAPS, batch_windows=4, root=root)
    partials = list(root.glob("tiny-llama/*.partial"))
    assert len(partials) == 1
    progress = json.loads((partials[0] / "progress.json").read_text())
    assert progress["done"] == 4 and len(progress["chain"]) == 64  # the finished windows' running hash
    assert not (partials[0] / "meta.json").exists()

    resumed_calls: list[int] = []

    def counting(input_ids, taps, encoder_ids=None):
        resumed_calls.append(int(input_ids.shape[0]))
        return original(input_ids, taps, encoder_ids=encoder_ids)

    monkeypatch.setattr(tiny_llama, "tap_features", counting)
    features = extract_features(tiny_llama, windows, TAPS, batch_windows=4, root=root)
    assert resumed_calls == [4, 2]  # windows 4..9 only: the finished first batch is not recomputed
    assert features.key == reference.key
    taps, final, _ = features.batch(slice(None))
    assert torch.equal(taps, ref_taps) and torch.equal(final, ref_final)
    assert not list(root.rglob("*.partial")) and not list(root.rglob("progress.json"))


def test_cache_key_depends_on_taps_windows_dtype_and_backbone(tmp_path, tiny_llama, windows, random_ids):
    base = extract_features(tiny_llama, windows, TAPS, root=tmp_path)
    other_taps = extract_features(tiny_llama, windows, [1, 4], root=tmp_path)
    reordered = extract_features(tiny_llama, windows, [4, 2], root=tmp_path)
    other_windows = extract_features(tiny_llama, Windows.causal(random_ids(10, 12, seed=4)), TAPS, root=tmp_path)
    half = extract_features(tiny_llama, windows, TAPS, dtype="float16", root=tmp_path)
    gpt2 = extract_features(load_backbone("tiny-gpt2"), windows, TAPS, root=tmp_path)
    keys = [f.key for f in (base, other_taps, reordered, other_windows, half, gpt2)]
    assert len(set(keys)) == len(keys)
    assert len(_entries(tmp_path)) == 6
    assert gpt2.directory.parent.name == "tiny-gpt2"
    # Same content, new tensor objects: same key.
    copy = Windows.causal(windows.input_ids.clone())
    assert extract_features(tiny_llama, copy, TAPS, root=tmp_path).key == base.key


def test_batch_returns_float32_tensors_of_the_right_shapes(tmp_path, tiny_llama, windows):
    features = extract_features(tiny_llama, windows, TAPS, dtype="float16", root=tmp_path)
    assert np.load(features.directory / "taps.npy", mmap_mode="r").dtype == np.float16
    index = torch.tensor([7, 0, 7])
    taps, final, labels = features.batch(index)
    assert taps.dtype == torch.float32 and final.dtype == torch.float32
    assert taps.shape == (3, 12, 2, 64) and final.shape == (3, 12, 64)
    assert labels.shape == (3, 12) and torch.equal(labels, windows.labels[[7, 0, 7]])
    torch.testing.assert_close(taps[0], taps[2], atol=0, rtol=0)
    direct = tiny_llama.tap_features(windows.input_ids[[7]], TAPS)
    torch.testing.assert_close(taps[0], direct.taps[0], atol=1e-2, rtol=1e-2)  # fp16 storage
    batches = list(features.iter_batches(4))
    assert [b[0] for b in batches] == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert [b[1].shape[0] for b in batches] == [4, 4, 2]


def test_extract_rejects_bad_taps_before_any_work(tmp_path, tiny_llama, windows):
    with pytest.raises(ValueError, match=r"1\.\.4"):
        extract_features(tiny_llama, windows, [5], root=tmp_path)
    assert not list(tmp_path.iterdir())


def test_t5_extraction_uses_the_encoder_prefix(tmp_path, random_ids):
    backbone = load_backbone("tiny-t5")
    enc, dec = random_ids(3, 6, seed=8), random_ids(3, 5, seed=9)
    windows = Windows.prefix_lm(enc, dec, random_ids(3, 5, seed=10))
    features = extract_features(backbone, windows, [3, 4], batch_windows=2, root=tmp_path)
    taps, final, _ = features.batch(slice(None))
    direct = backbone.tap_features(dec, [3, 4], encoder_ids=enc)
    torch.testing.assert_close(final, direct.final, atol=1e-5, rtol=0)
    torch.testing.assert_close(taps, direct.taps, atol=1e-5, rtol=0)
    other = backbone.tap_features(dec, [3, 4], encoder_ids=random_ids(3, 6, seed=11))
    assert not torch.allclose(final, other.final, atol=1e-4)  # the prefix matters
