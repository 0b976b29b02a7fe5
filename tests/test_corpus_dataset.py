"""Tests of abi.corpus_dataset: the experiments' split as a DatasetDict, tokenized to the same stream."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import datasets
import pyarrow as pa
import pytest

from abi import corpus_dataset as cd
from abi.backbones import BackboneUnavailableError, load_backbone
from abi.cache_integrity import CacheIntegrityWarning, forget_digests
from abi.data import CODE_CORPUS, SPLITS, Corpus, CorpusFile, CorpusSplit, package_of, token_stream
from abi.experiments.common import domain_split

datasets.disable_progress_bars()


def make_file(path: str, text: str) -> CorpusFile:
    return CorpusFile(path, package_of(path), text, hashlib.sha256(text.encode()).hexdigest())


@pytest.fixture
def small_split() -> tuple[Corpus, CorpusSplit]:
    """Three splits of a made-up corpus, with an empty file and non-ASCII text; ``zeta`` has no recorded licence."""
    parts = {
        "train": [
            make_file("alpha-1.0/a.py", "def f(x):\n    return x + 1\n"),
            make_file("alpha-1.0/b.py", ""),
            make_file("zeta-0.2/z.py", "# café ünïcode\nclass Z:\n    pass\n"),
        ],
        "validation": [make_file("alpha-1.0/c.py", "import os\nprint(os.sep)\n")],
        "test": [make_file("alpha-1.0/d.py", "x = [i * i for i in range(10)]\n"), make_file("alpha-1.0/e.py", "\n")],
    }
    files = sorted((f for part in parts.values() for f in part), key=lambda f: f.path)
    packages = [{"name": "alpha", "version": "1.0", "license": "MIT"}]
    corpus = Corpus(files, {"name": "made-up", "packages": packages, "sha256": "0" * 64})
    return corpus, CorpusSplit(
        parts["train"], parts["validation"], parts["test"], "file", (0.8, 0.1, 0.1), "s", "0" * 64
    )


@pytest.fixture(scope="module")
def gpt2_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import GPT2TokenizerFast

    from abi.backbones.loading import gpt2_tokenizer_dir

    try:
        return GPT2TokenizerFast.from_pretrained(gpt2_tokenizer_dir())
    except BackboneUnavailableError as error:
        pytest.skip(str(error))


def test_rows_and_columns_follow_the_split(small_split, tmp_path):
    corpus, split = small_split
    dataset = cd.saved_split_dataset("python", corpus, split, tmp_path)
    assert list(dataset) == list(SPLITS)
    for name in SPLITS:
        assert dataset[name].column_names == ["package", "version", "licence", "path", "text"]
        assert dataset[name]["path"] == [f.path for f in split.files(name)]
        assert dataset[name]["text"] == [f.text for f in split.files(name)]
    train = dataset["train"].to_list()
    assert {k: train[0][k] for k in ("package", "version", "licence")} == {
        "package": "alpha",
        "version": "1.0",
        "licence": "MIT",
    }
    assert (train[2]["package"], train[2]["version"], train[2]["licence"]) == ("zeta", "0.2", cd.UNKNOWN_LICENCE)


def test_load_from_disk_round_trips(small_split, tmp_path):
    corpus, split = small_split
    saved = cd.saved_split_dataset("python", corpus, split, tmp_path)
    folder = cd.dataset_dir("python", corpus, split, tmp_path)
    assert folder.parent == tmp_path and folder.name.startswith("python-") and len(folder.name) == len("python-") + 12
    loaded = datasets.load_from_disk(str(folder))
    assert isinstance(loaded, datasets.DatasetDict)
    assert {name: loaded[name].to_list() for name in SPLITS} == {name: saved[name].to_list() for name in SPLITS}


def test_tokenized_stream_equals_token_stream(small_split, gpt2_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("ABI_CACHE_DIR", str(tmp_path / "cache"))
    corpus, split = small_split
    tokenized = cd.tokenize_dataset(cd.saved_split_dataset("python", corpus, split, tmp_path), gpt2_tokenizer)
    for name in SPLITS:
        expected = token_stream(split.files(name), gpt2_tokenizer)
        for separator in (None, 0):
            stream = cd.dataset_token_stream(tokenized[name], cd.separator_of(gpt2_tokenizer, separator))
            reference = expected if separator is None else token_stream(split.files(name), gpt2_tokenizer, 0)
            assert stream.dtype == reference.dtype and stream.tobytes() == reference.tobytes()
    shuffled = tokenized["train"].select([2, 0, 1])  # rows out of path order are put back in order
    assert cd.dataset_token_stream(shuffled, 7).tobytes() == token_stream(split.train, gpt2_tokenizer, 7).tobytes()


def test_an_empty_split_saves_loads_and_gives_an_empty_stream(small_split, gpt2_tokenizer, tmp_path, monkeypatch):
    """datasets 5.2 writes no shard for an empty split and then cannot load it; one shard per split avoids that."""
    monkeypatch.setenv("ABI_CACHE_DIR", str(tmp_path / "cache"))
    corpus, split = small_split
    lopsided = CorpusSplit(split.train, [], [], "file", (1.0, 0.0, 0.0), "s", split.corpus_sha256)
    tokenized = cd.tokenize_dataset(cd.saved_split_dataset("python", corpus, lopsided, tmp_path), gpt2_tokenizer)
    for name in ("validation", "test"):
        stream = cd.dataset_token_stream(tokenized[name], 0)
        assert stream.tobytes() == token_stream([], gpt2_tokenizer, 0).tobytes() and stream.dtype == "int64"


def test_map_cache_is_reused_and_checked(small_split, gpt2_tokenizer, tmp_path):
    corpus, split = small_split
    dataset = cd.saved_split_dataset("python", corpus, split, tmp_path)["train"]
    first = cd.tokenize_split(dataset, gpt2_tokenizer, batch_size=1)  # one record batch per file
    cache = Path(first.cache_files[0]["filename"])
    assert cache.parent.parent == cd.dataset_dir("python", corpus, split, tmp_path)
    expected = cd.dataset_token_stream(first, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheIntegrityWarning)
        again = cd.tokenize_split(dataset, gpt2_tokenizer, batch_size=1)  # datasets' fingerprint: the same file
    assert Path(again.cache_files[0]["filename"]) == cache
    cache.write_bytes(cache.read_bytes()[: _last_batch_offset(cache)])
    forget_digests()
    assert (
        len(cd.tokenize_split(dataset, gpt2_tokenizer, batch_size=1, checked=False)) == 2
    )  # datasets alone: a row lost
    with pytest.warns(CacheIntegrityWarning, match=r"cache-.*\.arrow has sha256"):
        repaired = cd.tokenize_split(dataset, gpt2_tokenizer, batch_size=1)
    assert len(repaired) == 3 and cd.dataset_token_stream(repaired, 0).tobytes() == expected.tobytes()


def _last_batch_offset(arrow_stream: Path) -> int:
    """Byte offset where the stream's last record batch starts: a cut there leaves a valid, shorter stream."""
    source = pa.BufferReader(arrow_stream.read_bytes())
    reader = pa.ipc.MessageReader.open_stream(source)
    offsets = []
    while True:
        offsets.append(source.tell())
        try:
            reader.read_next_message()
        except StopIteration:
            break
    return offsets[-2]


def test_a_damaged_saved_dataset_is_rebuilt(small_split, tmp_path):
    corpus, split = small_split
    cd.saved_split_dataset("python", corpus, split, tmp_path)
    arrow = cd.dataset_dir("python", corpus, split, tmp_path) / "test" / "data-00000-of-00001.arrow"
    arrow.write_bytes(arrow.read_bytes()[:-100])
    forget_digests()
    with pytest.warns(CacheIntegrityWarning, match=r"test/data-00000-of-00001\.arrow has sha256"):
        rebuilt = cd.saved_split_dataset("python", corpus, split, tmp_path)
    assert rebuilt["test"]["text"] == [f.text for f in split.test]


def test_unknown_domain_is_refused_naming_the_valid_ones(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown domain 'java'; valid domains: python, python-dialect"):
        cd.corpus_dataset("java", root=tmp_path)
    with pytest.raises(SystemExit):
        cd.main(["export", "--domain", "java", "--out", str(tmp_path / "out")])
    assert "valid domains: python, python-dialect" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the real corpus


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    try:
        return load_backbone("smollm2-135m").tokenizer
    except BackboneUnavailableError as error:
        pytest.skip(str(error))


@pytest.mark.slow
@pytest.mark.parametrize("domain", ["python", "python-dialect"])
def test_real_domain_rows_equal_the_experiment_split(domain, tmp_path):
    _, split = domain_split(domain=domain)
    dataset = cd.corpus_dataset(domain, root=tmp_path)
    licences = {p.name: (p.version, p.license) for p in CODE_CORPUS}
    for name in SPLITS:
        rows = dataset[name].to_list()
        files = split.files(name)
        assert [r["path"] for r in rows] == [f.path for f in files]
        assert [r["text"] for r in rows] == [f.text for f in files]
        assert all((r["version"], r["licence"]) == licences[r["package"]] for r in rows)
    if domain == "python-dialect":  # the dialect's text, not the plain corpus's
        plain = domain_split(domain="python")[1]
        assert dataset["train"]["text"][:5] != [f.text for f in plain.train[:5]]


@pytest.mark.slow
def test_real_stream_is_byte_identical_and_exports(smollm2_tokenizer, tmp_path, monkeypatch):
    _, split = domain_split(domain="python")  # read before the cache moves: the corpus lives in the real cache
    monkeypatch.setenv("ABI_CACHE_DIR", str(tmp_path / "cache"))
    tokenized = cd.tokenize_dataset(cd.corpus_dataset("python", root=tmp_path), smollm2_tokenizer)
    for name in SPLITS:
        stream = cd.dataset_token_stream(tokenized[name], cd.separator_of(smollm2_tokenizer))
        expected = token_stream(split.files(name), smollm2_tokenizer)
        assert stream.dtype == expected.dtype and stream.tobytes() == expected.tobytes()
    out = cd.export(tmp_path / "export", "python")
    exported = datasets.load_from_disk(str(out))
    assert exported["validation"]["path"] == [f.path for f in split.validation]
    assert (out / "abi_identity.json").is_file()
    with pytest.raises(FileExistsError, match="not an empty folder"):
        cd.export(out, "python")
