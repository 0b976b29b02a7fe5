"""The shared text of a migration: the same characters for two models, each tokenized its own way.

Procrustes pairs the states of a source model S and a target model T row by row, so both sides
must describe the same snippets. :func:`draw_shared_text` draws ``(context, sentence)`` snippets
of held-in training text; :func:`tokenize_shared` tokenizes them with one model's own tokenizer;
:func:`check_paired` refuses two token sets that were not made from the same text, before any
model runs (see :mod:`abi.transfer` for the whole migration).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from abi.data import CorpusFile


class SentenceMismatchError(ValueError):
    """The two sides of a migration were not given the same shared text."""


@dataclass(frozen=True)
class SharedText:
    """``(context, sentence)`` snippets; the sentence is what gets pooled, the context precedes it."""

    contexts: tuple[str, ...]
    sentences: tuple[str, ...]
    origin: tuple[str, ...] = ()  # "path:line" of each snippet, for the record

    def __post_init__(self) -> None:
        if len(self.contexts) != len(self.sentences):
            raise SentenceMismatchError(f"{len(self.contexts)} contexts for {len(self.sentences)} sentences.")

    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps([self.contexts, self.sentences]).encode()).hexdigest()


def draw_shared_text(
    files: Sequence[CorpusFile], n: int, context_chars: int, sentence_chars: int, seed: int
) -> SharedText:
    """``n`` distinct snippets from ``files`` (pass the *training* split only), seeded.

    A snippet starts at a random non-blank line of a random file: the sentence is that line and the
    following ones up to ``sentence_chars`` characters (cut after the last whole line that fits,
    else at the limit); the context is the lines before it, up to ``context_chars`` characters.
    """
    if n < 1 or context_chars < 1 or sentence_chars < 1:
        raise ValueError(f"need n, context_chars, sentence_chars >= 1, got {n}, {context_chars}, {sentence_chars}.")
    candidates = [f for f in sorted(files, key=lambda f: f.path) if f.text.count("\n") >= 2]
    if not candidates:
        raise ValueError("no file with at least two lines to draw shared sentences from.")
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, int]] = set()
    contexts, sentences, origin = [], [], []
    for _ in range(50 * n):
        if len(sentences) == n:
            break
        file_index = int(rng.integers(len(candidates)))
        lines = candidates[file_index].text.splitlines(keepends=True)
        line_index = int(rng.integers(1, len(lines)))
        if (file_index, line_index) in seen or not lines[line_index].strip():
            continue
        seen.add((file_index, line_index))
        context = _last_lines(lines[:line_index], context_chars)
        sentence = _first_lines(lines[line_index:], sentence_chars)
        if context.strip() and sentence.strip():
            contexts.append(context)
            sentences.append(sentence)
            origin.append(f"{candidates[file_index].path}:{line_index + 1}")
    if len(sentences) < n:
        raise ValueError(f"found only {len(sentences)} distinct snippets for n={n}; ask for fewer sentences.")
    return SharedText(tuple(contexts), tuple(sentences), tuple(origin))


def _last_lines(lines: list[str], limit: int) -> str:
    """The whole lines at the end of ``lines`` that fit in ``limit`` characters (else the last line's tail)."""
    text = ""
    for line in reversed(lines):
        if len(text) + len(line) > limit:
            return text or line[-limit:]
        text = line + text
    return text


def _first_lines(lines: list[str], limit: int) -> str:
    """The whole lines at the start of ``lines`` that fit in ``limit`` characters (else the first line's head)."""
    text = ""
    for line in lines:
        if len(text) + len(line) > limit:
            return text or line[:limit]
        text += line
    return text


@dataclass(frozen=True)
class TokenizedSentences:
    """One model's tokens of a :class:`SharedText`: context ids and sentence ids per snippet."""

    model: str
    text_sha256: str
    context_ids: tuple[tuple[int, ...], ...]
    sentence_ids: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return len(self.sentence_ids)

    @property
    def ids_sha256(self) -> str:
        return hashlib.sha256(json.dumps([self.context_ids, self.sentence_ids]).encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "n": len(self),
            "mean_context_tokens": float(np.mean([len(c) for c in self.context_ids])),
            "mean_sentence_tokens": float(np.mean([len(s) for s in self.sentence_ids])),
        }


def tokenize_shared(text: SharedText, tokenizer: Any, model: str) -> TokenizedSentences:
    """Tokenize context + sentence as one string (so merges at the seam are the model's own) and
    split the tokens at the first one that starts inside the sentence (character offsets)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{model}: a fast tokenizer (character offsets) is needed to split context from sentence.")
    contexts, sentences = [], []
    for k, (context, sentence) in enumerate(zip(text.contexts, text.sentences)):
        encoded = tokenizer(context + sentence, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        ids, starts = encoded["input_ids"], [offset[0] for offset in encoded["offset_mapping"]]
        split = next((j for j, start in enumerate(starts) if start >= len(context)), len(ids))
        if split == 0 or split == len(ids):
            raise ValueError(f"{model}: snippet {k} has an empty context or sentence after tokenization.")
        contexts.append(tuple(ids[:split]))
        sentences.append(tuple(ids[split:]))
    return TokenizedSentences(model, text.sha256, tuple(contexts), tuple(sentences))


def check_paired(source: TokenizedSentences, target: TokenizedSentences) -> None:
    """Refuse two token sets that do not come from the same snippets (call before any model runs)."""
    if source.text_sha256 != target.text_sha256 or len(source) != len(target):
        raise SentenceMismatchError(
            f"the shared sentences differ between {source.model!r} ({len(source)} snippets, text "
            f"{source.text_sha256[:12]}) and {target.model!r} ({len(target)} snippets, text "
            f"{target.text_sha256[:12]}); "
            "tokenize one SharedText with both tokenizers."
        )
