"""The seeded Python dialect on a hand-made corpus: no network, no big corpus."""

from __future__ import annotations

import hashlib
import re

import pytest

from abi.data import Corpus, CorpusFile, CorpusSplit
from abi.dialect import (
    MAX_DIALECT_WORDS,
    PYTHON_KEYWORDS,
    DialectError,
    build_dialect,
    check_dialect_words,
    dialect_split,
)
from abi.experiments.common import DOMAINS, check_domain

WORD = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")

# Train counts of the words that are not keywords: alpha 5, beta 4, gamma 3, self 2, define 1, delta 1.
TRAIN_TEXTS = {
    "pkg-1.0/a.py": "alpha alpha alpha beta beta gamma\n",
    "pkg-1.0/b.py": "alpha alpha beta beta gamma gamma delta\ndef define(self): return self\n",
}
VALIDATION_TEXTS = {"pkg-1.0/c.py": "zeta zeta zeta zeta zeta zeta alpha\n"}
TEST_TEXTS = {"pkg-1.0/d.py": "if alpha: pass  # defined gamma_x, _def, def_, alpha.beta\n"}


def _file(path: str, text: str) -> CorpusFile:
    return CorpusFile(path, "pkg", text, hashlib.sha256(text.encode()).hexdigest())


def _corpus(extra_validation: dict[str, str] | None = None) -> tuple[Corpus, CorpusSplit]:
    parts = {
        "train": [_file(p, t) for p, t in TRAIN_TEXTS.items()],
        "validation": [_file(p, t) for p, t in {**VALIDATION_TEXTS, **(extra_validation or {})}.items()],
        "test": [_file(p, t) for p, t in TEST_TEXTS.items()],
    }
    files = sorted((f for part in parts.values() for f in part), key=lambda f: f.path)
    sha = hashlib.sha256("".join(f"{f.path}\0{f.sha256}\n" for f in files).encode()).hexdigest()
    corpus = Corpus(files, {"name": "python-code", "sha256": sha})
    split = CorpusSplit(parts["train"], parts["validation"], parts["test"], "file", (0.8, 0.1, 0.1), "salt", sha)
    return corpus, split


def _vocabulary(files) -> set[str]:
    return {word for f in files for word in WORD.findall(f.text)}


def test_same_seed_gives_the_same_dialect() -> None:
    corpus, split = _corpus()
    first, second = (build_dialect(split.train, corpus.files, 3, seed=7) for _ in "ab")
    assert first.table == second.table and first.sha256 == second.sha256
    texts = [[f.text for f in dialect_split(corpus, split, 3, 7)[1].test] for _ in "ab"]
    assert texts[0] == texts[1]


def test_different_seeds_give_different_tables() -> None:
    corpus, split = _corpus()
    a, b = (build_dialect(split.train, corpus.files, 3, seed) for seed in (0, 1))
    assert a.table.keys() == b.table.keys()
    assert a.table != b.table and a.sha256 != b.sha256


@pytest.mark.parametrize(
    ("n_words", "frequent"),
    [
        (0, []),
        (2, ["alpha", "beta"]),
        (3, ["alpha", "beta", "gamma"]),
        (4, ["alpha", "beta", "gamma", "self"]),
        (5, ["alpha", "beta", "gamma", "self", "define"]),  # ties (define, delta: 1 each) go by the word
    ],
)
def test_keywords_and_exactly_the_most_frequent_train_words_are_renamed(n_words: int, frequent: list[str]) -> None:
    corpus, split = _corpus()
    dialect = build_dialect(split.train, corpus.files, n_words, seed=0)
    assert set(dialect.table) == set(PYTHON_KEYWORDS) | set(frequent)
    assert len(dialect.table) == len(PYTHON_KEYWORDS) + n_words
    assert "zeta" not in dialect.table, "the table comes from the train split only"


def test_a_dose_larger_than_the_train_vocabulary_renames_every_train_word() -> None:
    corpus, split = _corpus()
    dialect = build_dialect(split.train, corpus.files, MAX_DIALECT_WORDS, seed=0)
    assert set(dialect.table) == set(PYTHON_KEYWORDS) | (_vocabulary(split.train) - set(PYTHON_KEYWORDS))


def test_nonce_words_are_distinct_and_never_words_of_the_corpus() -> None:
    corpus, split = _corpus()
    dialect = build_dialect(split.train, corpus.files, 5, seed=0)
    nonce = list(dialect.table.values())
    assert len(set(nonce)) == len(nonce)
    assert not set(nonce) & _vocabulary(corpus.files)
    assert all(re.fullmatch(r"[a-z]+", word) for word in nonce)
    # Put every nonce word of that dialect into a held-out file: the same seed must now avoid all of them.
    corpus2, split2 = _corpus({"pkg-1.0/e.py": " ".join(nonce) + "\n"})
    again = build_dialect(split2.train, corpus2.files, 5, seed=0)
    assert again.table.keys() == dialect.table.keys()
    assert not set(again.table.values()) & set(nonce)
    assert not set(again.table.values()) & _vocabulary(corpus2.files)


def test_renaming_is_whole_word_only() -> None:
    corpus, split = _corpus()
    dialect = build_dialect(split.train, corpus.files, 0, seed=0)
    table = dialect.table
    assert "define" not in table and "def" in table
    assert dialect.translate("def define(): pass") == f"{table['def']} define(): {table['pass']}"
    assert dialect.translate("_def def_ defined define deff") == "_def def_ defined define deff"
    assert dialect.translate("x.def(if)") == f"x.{table['def']}({table['if']})"


def test_dialect_split_keeps_paths_and_splits_and_renames_consistently() -> None:
    corpus, split = _corpus()
    new_corpus, new_split, dialect = dialect_split(corpus, split, 3, seed=0)
    for name in ("train", "validation", "test"):
        old_files, new_files = split.files(name), new_split.files(name)
        assert [f.path for f in new_files] == [f.path for f in old_files]
        assert new_split.manifest_hash(name) == split.manifest_hash(name)
        for old, new in zip(old_files, new_files):
            assert new.text == dialect.translate(old.text)
            assert new.sha256 == hashlib.sha256(new.text.encode()).hexdigest()
            assert not set(dialect.table) & _vocabulary([new]), "a renamed word survived"
    assert [f.path for f in new_corpus.files] == [f.path for f in corpus.files]
    assert (new_split.level, new_split.fractions, new_split.salt) == (split.level, split.fractions, split.salt)
    assert new_split.corpus_sha256 == new_corpus.identity["sha256"] != corpus.identity["sha256"]
    # One word, one nonce word, in every split: "alpha" is in train, validation and test.
    nonce = dialect.table["alpha"]
    assert all(nonce in new_split.files(name)[0].text for name in ("train", "validation", "test"))
    assert "zeta" in new_split.validation[0].text, "words outside the table are kept"


def test_identity_records_dose_seed_and_table_hash() -> None:
    corpus, split = _corpus()
    new_corpus, _, dialect = dialect_split(corpus, split, 4, seed=11)
    identity = dialect.identity()
    assert identity["n_words"] == 4 and identity["seed"] == 11
    assert identity["n_keywords"] == len(PYTHON_KEYWORDS)
    assert identity["n_renamed"] == len(dialect.table) == len(PYTHON_KEYWORDS) + 4
    assert identity["table_sha256"] == dialect.sha256
    assert identity["examples"]["def"] == dialect.table["def"] and identity["examples"]["self"] == dialect.table["self"]
    assert new_corpus.identity["dialect"] == identity
    assert new_corpus.identity["name"] == "python-dialect"
    assert new_corpus.identity["source_sha256"] == corpus.identity["sha256"]


@pytest.mark.parametrize("n_words", [0, 1, MAX_DIALECT_WORDS])
def test_check_dialect_words_accepts_the_range(n_words: int) -> None:
    assert check_dialect_words(n_words) == n_words


@pytest.mark.parametrize("n_words", [-1, MAX_DIALECT_WORDS + 1, True, 1.5, "10", None])
def test_check_dialect_words_refuses_out_of_range_and_non_integers(n_words) -> None:
    assert MAX_DIALECT_WORDS == 2000
    with pytest.raises(DialectError, match=r"0\.\.2000"):
        check_dialect_words(n_words)
    assert issubclass(DialectError, ValueError)


def test_build_dialect_checks_the_dose_first() -> None:
    corpus, split = _corpus()
    with pytest.raises(DialectError, match=r"0\.\.2000"):
        build_dialect(split.train, corpus.files, -1, seed=0)


def test_unknown_domain_names_the_valid_domains() -> None:
    assert DOMAINS == ("python", "python-dialect")
    with pytest.raises(ValueError, match="valid domains: python, python-dialect"):
        check_domain("java")
    assert check_domain("python-dialect", 200) == "python-dialect"
    with pytest.raises(DialectError, match=r"0\.\.2000"):
        check_domain("python-dialect", 2001)
