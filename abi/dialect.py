"""A seeded *dialect* of the Python corpus: a domain the backbone does not already know.

smollm2 was pre-trained on much Python (held-out perplexity about 14), so a module trained on the
plain code corpus has little to add, and the bare backbone already agrees with it. The dialect
renames every Python keyword and the ``n_words`` most frequent other identifiers of the *train*
split to nonce words (``def`` -> ``vumo``, ``self`` -> ``kezapi``), consistently in every split, so:

* the domain is real code with its structure intact, but its most frequent words are new to any
  pre-trained model: the module has something to learn, and the bare backbone visibly fails;
* ``n_words`` is the dose: 0 renames the keywords only, more words make the domain stranger;
* train/validation/test keep the file-level split of the plain corpus (paths are unchanged), and
  the renaming table comes from the train split only.

Renaming is lexical (a whole-word regular expression), so a renamed word changes in comments and
strings too, as a dialect would. The nonce words are drawn from a seeded generator of
consonant-vowel syllables and never collide with a word of the corpus.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from abi.data import Corpus, CorpusFile, CorpusSplit

# Python 3.12's keyword.kwlist, pinned so that the dialect does not change with the interpreter.
PYTHON_KEYWORDS = (
    "False",
    "None",
    "True",
    "and",
    "as",
    "assert",
    "async",
    "await",
    "break",
    "class",
    "continue",
    "def",
    "del",
    "elif",
    "else",
    "except",
    "finally",
    "for",
    "from",
    "global",
    "if",
    "import",
    "in",
    "is",
    "lambda",
    "nonlocal",
    "not",
    "or",
    "pass",
    "raise",
    "return",
    "try",
    "while",
    "with",
    "yield",
)
MAX_DIALECT_WORDS = 2000
_WORD = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


class DialectError(ValueError):
    """A dialect dose out of range."""


def check_dialect_words(n_words: int) -> int:
    """The dose must lie in 0..MAX_DIALECT_WORDS; the message names the range."""
    if isinstance(n_words, bool) or not isinstance(n_words, int) or not 0 <= n_words <= MAX_DIALECT_WORDS:
        raise DialectError(
            f"dialect_words must be an integer in 0..{MAX_DIALECT_WORDS} (0 renames the "
            f"{len(PYTHON_KEYWORDS)} keywords only), got {n_words!r}."
        )
    return n_words


@dataclass(frozen=True)
class Dialect:
    """The renaming table and what a result file records about it."""

    table: dict[str, str]
    n_words: int
    seed: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(sorted(self.table.items())).encode()).hexdigest()

    def identity(self) -> dict:
        examples = {word: self.table[word] for word in ("def", "return", "self", "import") if word in self.table}
        return {
            "n_keywords": len(PYTHON_KEYWORDS),
            "n_words": self.n_words,
            "seed": self.seed,
            "n_renamed": len(self.table),
            "table_sha256": self.sha256,
            "examples": examples,
        }

    def translate(self, text: str) -> str:
        return _WORD.sub(lambda match: self.table.get(match.group(0), match.group(0)), text)


def _nonce_words(count: int, taken: set[str], seed: int) -> list[str]:
    """``count`` distinct nonce words of 2-3 consonant-vowel syllables, none of them in ``taken``."""
    rng = np.random.default_rng(seed)
    words: list[str] = []
    seen = set(taken)
    while len(words) < count:
        syllables = int(rng.integers(2, 4))
        word = "".join(
            _CONSONANTS[rng.integers(len(_CONSONANTS))] + _VOWELS[rng.integers(len(_VOWELS))] for _ in range(syllables)
        )
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def build_dialect(
    train_files: Sequence[CorpusFile], all_files: Sequence[CorpusFile], n_words: int, seed: int
) -> Dialect:
    """Keywords plus the ``n_words`` most frequent other words of ``train_files`` (ties by word)
    mapped to nonce words that occur nowhere in ``all_files``."""
    check_dialect_words(n_words)
    counts = Counter(word for f in train_files for word in _WORD.findall(f.text))
    keywords = set(PYTHON_KEYWORDS)
    frequent = sorted((w for w in counts if w not in keywords), key=lambda w: (-counts[w], w))[:n_words]
    renamed = [*PYTHON_KEYWORDS, *frequent]
    vocabulary = {word for f in all_files for word in _WORD.findall(f.text)}
    return Dialect(dict(zip(renamed, _nonce_words(len(renamed), vocabulary, seed))), n_words, seed)


def _translated(files: Sequence[CorpusFile], dialect: Dialect) -> list[CorpusFile]:
    out = []
    for f in files:
        text = dialect.translate(f.text)
        out.append(CorpusFile(f.path, f.package, text, hashlib.sha256(text.encode()).hexdigest()))
    return out


def dialect_split(corpus: Corpus, split: CorpusSplit, n_words: int, seed: int) -> tuple[Corpus, CorpusSplit, Dialect]:
    """The dialect of an already split corpus: same files in the same splits, words renamed."""
    dialect = build_dialect(split.train, corpus.files, n_words, seed)
    parts = {name: _translated(split.files(name), dialect) for name in ("train", "validation", "test")}
    files = sorted((f for part in parts.values() for f in part), key=lambda f: f.path)
    corpus_hash = hashlib.sha256("".join(f"{f.path}\0{f.sha256}\n" for f in files).encode()).hexdigest()
    identity = {
        **corpus.identity,
        "name": "python-dialect",
        "sha256": corpus_hash,
        "source_sha256": corpus.identity["sha256"],
        "dialect": dialect.identity(),
    }
    new_split = CorpusSplit(
        parts["train"], parts["validation"], parts["test"], split.level, split.fractions, split.salt, corpus_hash
    )
    return Corpus(files, identity), new_split, dialect
