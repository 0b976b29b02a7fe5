"""The cold-build benchmark's comparison: a rebuilt result equals the committed one when only its cost differs."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.cold_build import compare_results, differences

COMMITTED = {"verdict": "mixed", "arms": [{"nib": 0.81, "stage_s": 12.0, "from_cache": True}], "provenance": {"a": 1}}


def test_cost_and_cache_state_do_not_count():
    rebuilt = {"verdict": "mixed", "arms": [{"nib": 0.81, "stage_s": 99.0, "from_cache": False}], "provenance": {}}
    assert differences(COMMITTED, rebuilt) == []


def test_a_changed_value_a_missing_key_and_a_shorter_list_are_named():
    rebuilt = {"verdict": "not reproduced", "arms": [{"stage_s": 1.0}]}
    named = ["/arms[0]/nib (only in committed)", "/verdict ('mixed' vs 'not reproduced')"]
    assert differences(COMMITTED, rebuilt) == named
    assert differences(COMMITTED, {**COMMITTED, "arms": []}) == ["/arms (length 1 vs 0)"]


def test_a_result_the_rebuild_did_not_write_is_not_identical(tmp_path: Path):
    (tmp_path / "core_nib.json").write_text(json.dumps(COMMITTED))
    report = compare_results({"core_nib.json": COMMITTED, "gone.json": COMMITTED}, tmp_path)
    assert report["core_nib.json"] == {"identical": True, "differences": 0, "first": []}
    assert report["gone.json"]["identical"] is False and report["gone.json"]["first"] == ["(not written)"]
