"""The shared verdict vocabulary: the pre-registered regime gate, row verdicts, and how rows combine."""

from __future__ import annotations

import pytest

from abi.verdicts import (
    GATE_MIN_PPL_REDUCTION,
    MIXED,
    NOT_DISCRIMINATIVE,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    REPRODUCED,
    VERDICTS,
    combine,
    gated,
    nib_row_verdict,
    regime_gate,
)


def test_vocabulary_is_fixed() -> None:
    assert GATE_MIN_PPL_REDUCTION == 0.25
    assert NOT_DISCRIMINATIVE == "passes but not discriminative"
    assert NOT_TESTABLE == "not testable in this regime"
    assert set(VERDICTS) == {REPRODUCED, NOT_REPRODUCED, NOT_DISCRIMINATIVE, NOT_TESTABLE, MIXED}
    assert len(set(VERDICTS)) == 5


# -- regime gate ----------------------------------------------------------------------------------------
def test_gate_at_exactly_the_threshold_is_testable_when_the_bare_backbone_fails() -> None:
    gate = regime_gate(75.0, 100.0, "FAIL")
    assert gate == {"module_ppl_reduction": 0.25, "bare_backbone_nib": "FAIL", "testable": True}


def test_gate_just_below_the_threshold_is_not_testable() -> None:
    gate = regime_gate(75.01, 100.0, "FAIL")
    assert gate["module_ppl_reduction"] == pytest.approx(0.2499)
    assert gate["testable"] is False


@pytest.mark.parametrize("module_ppl", [75.0, 50.0, 1.0])
def test_gate_is_never_testable_when_the_bare_backbone_passes(module_ppl: float) -> None:
    gate = regime_gate(module_ppl, 100.0, "PASS")
    assert gate["module_ppl_reduction"] >= 0.25
    assert gate["testable"] is False and gate["bare_backbone_nib"] == "PASS"


def test_gate_of_a_module_that_raises_perplexity_is_negative_and_not_testable() -> None:
    gate = regime_gate(120.0, 100.0, "FAIL")
    assert gate["module_ppl_reduction"] == pytest.approx(-0.2)
    assert gate["testable"] is False


@pytest.mark.parametrize("verdict", ["pass", "fail", "PASSED", "", None])
def test_gate_refuses_a_verdict_that_is_not_pass_or_fail(verdict) -> None:
    with pytest.raises(ValueError, match="'PASS' or 'FAIL'"):
        regime_gate(50.0, 100.0, verdict)


def test_gated_replaces_every_verdict_of_an_untestable_setting() -> None:
    testable, untestable = regime_gate(50.0, 100.0, "FAIL"), regime_gate(50.0, 100.0, "PASS")
    for verdict in (REPRODUCED, NOT_REPRODUCED, NOT_DISCRIMINATIVE, MIXED):
        assert gated(testable, verdict) == verdict
        assert gated(untestable, verdict) == NOT_TESTABLE


# -- row verdicts -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n_pass", "n_seeds", "beats", "expected"),
    [
        (3, 3, True, REPRODUCED),
        (3, 3, False, NOT_DISCRIMINATIVE),
        (1, 1, True, REPRODUCED),
        (1, 1, False, NOT_DISCRIMINATIVE),
        (2, 3, True, MIXED),
        (1, 3, False, MIXED),
        (0, 3, True, NOT_REPRODUCED),
        (0, 3, False, NOT_REPRODUCED),
    ],
)
def test_nib_row_verdict_every_branch(n_pass: int, n_seeds: int, beats: bool, expected: str) -> None:
    assert nib_row_verdict(n_pass, n_seeds, beats) == expected


# -- combining rows ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([], NOT_TESTABLE),
        ([NOT_TESTABLE], NOT_TESTABLE),
        ([NOT_TESTABLE, NOT_TESTABLE], NOT_TESTABLE),
        ([REPRODUCED], REPRODUCED),
        ([REPRODUCED, REPRODUCED], REPRODUCED),
        ([NOT_DISCRIMINATIVE, NOT_DISCRIMINATIVE], NOT_DISCRIMINATIVE),
        ([REPRODUCED, NOT_REPRODUCED], MIXED),
        ([REPRODUCED, NOT_DISCRIMINATIVE], MIXED),
        ([MIXED, MIXED], MIXED),
        ([NOT_TESTABLE, NOT_REPRODUCED], NOT_REPRODUCED),
        ([REPRODUCED, NOT_TESTABLE, REPRODUCED], REPRODUCED),
        ([NOT_TESTABLE, NOT_REPRODUCED, REPRODUCED], MIXED),
    ],
)
def test_combine(rows: list[str], expected: str) -> None:
    assert combine(rows) == expected


def test_combine_accepts_any_iterable() -> None:
    assert combine(v for v in (NOT_TESTABLE, REPRODUCED)) == REPRODUCED


@pytest.mark.parametrize(("n_pass", "n_seeds"), [(5, 3), (-1, 3), (0, 0)])
def test_nib_row_verdict_refuses_impossible_counts(n_pass: int, n_seeds: int) -> None:
    with pytest.raises(ValueError, match="0 <= n_pass <= n_seeds"):
        nib_row_verdict(n_pass, n_seeds, True)
