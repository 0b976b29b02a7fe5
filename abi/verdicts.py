"""One verdict vocabulary for every claim, and the pre-registered regime gate.

A test that cannot fail says nothing, so a setting is *testable* only when the module matters on its own
backbone and the bare backbone fails the NIB against it (:func:`regime_gate`). Verdicts come from one
vocabulary; a claim's verdict combines its rows' (:func:`combine`). Every claim's ``derive`` step computes
them, so the verifier re-derives them and chapters and the summary only read them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_DISCRIMINATIVE = "passes but not discriminative"
NOT_TESTABLE = "not testable in this regime"
MIXED = "mixed"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, NOT_DISCRIMINATIVE, NOT_TESTABLE, MIXED)

# Pre-registered (issue 11): the module must lower held-out domain perplexity by at least this fraction.
GATE_MIN_PPL_REDUCTION = 0.25


def regime_gate(module_ppl: float, bare_ppl: float, bare_nib_verdict: str) -> dict[str, Any]:
    """The gate of one setting: how much the reference module lowers held-out perplexity on its own
    backbone, whether the bare backbone passes the held-out NIB against it, and whether both make the
    setting testable (reduction >= 25 % and the bare backbone FAILS)."""
    if bare_nib_verdict not in ("PASS", "FAIL"):
        raise ValueError(f"bare_backbone_nib must be 'PASS' or 'FAIL', got {bare_nib_verdict!r}.")
    reduction = 1.0 - module_ppl / bare_ppl
    return {
        "module_ppl_reduction": reduction,
        "bare_backbone_nib": bare_nib_verdict,
        "testable": bool(reduction >= GATE_MIN_PPL_REDUCTION and bare_nib_verdict == "FAIL"),
    }


def gated(gate: dict[str, Any], verdict: str) -> str:
    """``verdict`` where the setting is testable, else "not testable in this regime" (never a pass or a fail)."""
    return verdict if gate["testable"] else NOT_TESTABLE


def nib_row_verdict(n_pass: int, n_seeds: int, beats_every_floor: bool) -> str:
    """A row about NIB agreement over seeds: all pass and beat every floor -> reproduced; all pass but some
    floor does as well -> passes but not discriminative; some pass -> mixed; none -> not reproduced."""
    if not 0 <= n_pass <= n_seeds or n_seeds < 1:
        raise ValueError(f"need 0 <= n_pass <= n_seeds and n_seeds >= 1, got n_pass={n_pass}, n_seeds={n_seeds}.")
    if n_pass == 0:
        return NOT_REPRODUCED
    if n_pass < n_seeds:
        return MIXED
    return REPRODUCED if beats_every_floor else NOT_DISCRIMINATIVE


def combine(row_verdicts: Iterable[str]) -> str:
    """A claim's verdict from its testable rows: their common verdict, "mixed" when they differ, and
    "not testable in this regime" when no row is testable."""
    testable = [v for v in row_verdicts if v != NOT_TESTABLE]
    if not testable:
        return NOT_TESTABLE
    return testable[0] if len(set(testable)) == 1 else MIXED
