"""The words every chapter and the front page use for a regime gate's two numbers, so that a module that
raises perplexity, or a bare backbone that passes, reads the same everywhere."""

from __future__ import annotations

BARE_VERB = {"PASS": "passes", "FAIL": "fails"}


def ppl_change(reduction: float, digits: int = 0) -> str:
    """``0.61`` -> "lowers held-out perplexity by 61%"; a negative reduction says that it raises it."""
    verb = "lowers" if reduction >= 0 else "raises"
    return f"{verb} held-out perplexity by {abs(reduction):.{digits}%}"


def bare_verb(outcome: str) -> str:
    """The gate's bare-backbone NIB outcome ("PASS"/"FAIL") as a verb: "passes"/"fails"."""
    return BARE_VERB[outcome]
