"""The cold-build benchmark's comparison: a rebuilt result equals the committed one when only its cost differs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from benchmarks.cold_build import committed_results, compare_results, differences

COMMITTED = {
    "verdict": "mixed",
    "arms": [{"nib": 0.81, "stage_s": 12.0, "median_s_per_step": 0.03, "s_per_step": 0.1, "from_cache": True}],
    "provenance": {"a": 1},
    "content_sha256": "aa",
}


def test_cost_and_cache_state_do_not_count():
    arm = {"nib": 0.81, "stage_s": 99.0, "median_s_per_step": 0.06, "from_cache": False}
    rebuilt = {"verdict": "mixed", "arms": [arm], "provenance": {}, "content_sha256": "bb"}
    assert differences(COMMITTED, rebuilt) == []


def test_a_changed_value_a_missing_key_and_a_shorter_list_are_named():
    rebuilt = {"verdict": "not reproduced", "arms": [{"stage_s": 1.0}]}
    named = ["/arms[0]/nib (only in committed)", "/verdict ('mixed' vs 'not reproduced')"]
    assert differences(COMMITTED, rebuilt) == named
    assert differences(COMMITTED, {**COMMITTED, "arms": []}) == ["/arms (length 1 vs 0)"]


def test_a_result_the_rebuild_did_not_write_is_not_identical(tmp_path: Path):
    (tmp_path / "core_nib.json").write_text(json.dumps(COMMITTED))
    report = compare_results({"core_nib.json": COMMITTED, "gone.json": COMMITTED}, tmp_path)
    assert report["core_nib.json"] == {"identical": True, "differences": 0, "first": [], "verdict_differences": []}
    assert report["gone.json"]["identical"] is False and report["gone.json"]["first"] == ["(not written)"]


def test_the_committed_claim_results_are_read_from_head_not_from_the_rebuilt_tree(tmp_path: Path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "core_nib.json").write_text(json.dumps(COMMITTED))
    (tmp_path / "results" / "benchmarks.json").write_text("{}")
    subprocess.run([*git, "add", "results"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "results"], check=True)
    (tmp_path / "results" / "core_nib.json").write_text(json.dumps({"verdict": "rebuilt"}))
    assert committed_results(tmp_path) == {"core_nib.json": COMMITTED}


def test_a_changed_verdict_is_listed_apart_from_changed_numbers(tmp_path: Path):
    rebuilt = {**COMMITTED, "verdict": "reproduced", "arms": [{**COMMITTED["arms"][0], "nib": 0.8}]}
    (tmp_path / "core_nib.json").write_text(json.dumps(rebuilt))
    report = compare_results({"core_nib.json": COMMITTED}, tmp_path)["core_nib.json"]
    assert report["differences"] == 2
    assert report["verdict_differences"] == ["/verdict ('mixed' vs 'reproduced')"]
