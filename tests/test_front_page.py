"""The front page: its findings and verdict table come from the result files, and it names its edition."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import yaml

from abi.book_edition import edition, edition_config
from abi.paths import REPO_ROOT
from abi.reports.summary import at_a_glance, findings, gated_setting_finding, scale_comparison, summary_table

RESULTS = REPO_ROOT / "results"


def test_findings_state_every_claims_verdict_and_gates(tmp_path: Path) -> None:
    table = summary_table(RESULTS)
    text = findings(table, RESULTS)
    glance = at_a_glance(table)
    assert len(text.splitlines()) == len(glance) == 4
    for claim, verdict in zip(glance["claim"], glance["verdict"]):
        assert f"**{claim}: {verdict}" in text
    for line, claim in zip(
        text.splitlines(), ("core_nib", "cross_architecture", "objective_ablation", "backbone_invariance")
    ):
        result = json.loads((RESULTS / f"{claim}.json").read_text())
        assert "regime_gates" in result, f"{claim}: every committed result carries its regime gates"
        assert line.count("held-out perplexity by") == len(result["regime_gates"]), f"{claim}: every setting's gate"


def test_a_result_older_than_the_gates_says_so(monkeypatch) -> None:
    import abi.reports.summary as summary

    real = summary.load_result

    def without_gates(path: Path) -> dict:
        result = real(path)
        return {k: v for k, v in result.items() if k != "regime_gates"} if "core_nib" in str(path) else result

    table = summary_table(RESULTS)
    monkeypatch.setattr(summary, "load_result", without_gates)
    first = findings(table, RESULTS).splitlines()[0]
    assert "before regime gates existed" in first and "held-out perplexity" not in first


def test_the_update_gate_is_stated_where_a_claim_has_one() -> None:
    gate = {"module_ppl_reduction": 0.7, "bare_backbone_nib": "FAIL", "testable": True}
    updates = {"0": {"takes": True}, "1": {"takes": False}, "2": {"takes": False}}
    result = {
        "regime_gates": {"dialect": gate},
        "row_verdicts": {"dialect": "not testable in this regime"},
        "update_gates": {"dialect": {"plain": {"updates": updates, "testable": False}}},
    }
    assert "backbone updates that take (the update gate): 1 of 3 plain" in gated_setting_finding(result, "dialect")
    del result["update_gates"]
    assert "update" not in gated_setting_finding(result, "dialect")


def test_a_gated_claim_without_its_own_sentence_gets_the_generic_one() -> None:
    result = {
        "regime_gates": {"python": {"module_ppl_reduction": 0.02, "bare_backbone_nib": "PASS", "testable": False}},
        "row_verdicts": {"python": {"kl_lower_top5": "not testable in this regime"}},
    }
    text = gated_setting_finding(result, "python")
    assert text.startswith("*python*: kl lower top5: **not testable in this regime**")
    assert "lowers held-out perplexity by 2%" in text and "the bare backbone passes the NIB" in text
    result["regime_gates"]["python"]["module_ppl_reduction"] = -0.014
    labelled = gated_setting_finding(result, "python", {"kl_lower_top5": "c. raw KL has lower top-5"})
    assert labelled.startswith("*python*: c. raw KL has lower top-5: **not testable")
    assert "raises held-out perplexity by 1%" in labelled


def test_a_claim_without_a_result_is_said_to_be_unrun(tmp_path: Path) -> None:
    shutil.copy(RESULTS / "core_nib.json", tmp_path / "core_nib.json")
    text = findings(summary_table(tmp_path), tmp_path)
    assert text.count("its notebook has not been run") == 3


def test_the_edition_names_the_version_and_the_results_commit(tmp_path: Path) -> None:
    committed = edition("cpu", committed_results=True)
    assert committed["version"] and committed["profile"] == "cpu"
    assert re.fullmatch(r"the committed results of commit [0-9a-f]{7,}", committed["results_source"])
    assert committed["results_date"][:2] == "20"
    assert edition("smoke", committed_results=False)["results_source"] == "this build's own smoke run"


def test_the_edition_config_adds_substitutions_and_leaves_the_committed_config_alone(tmp_path: Path) -> None:
    shutil.copy(REPO_ROOT / "_config.yml", tmp_path / "_config.yml")
    before = (tmp_path / "_config.yml").read_text()
    path = edition_config(tmp_path, {"version": "9.9", "results_source": "commit abc1234"})
    config = yaml.safe_load(path.read_text())
    assert config["parse"]["myst_substitutions"] == {"version": "9.9", "results_source": "commit abc1234"}
    assert "substitution" in config["parse"]["myst_enable_extensions"]
    assert (tmp_path / "_config.yml").read_text() == before
    assert path.is_relative_to(tmp_path / "_build")


def test_the_scale_table_lists_every_parameter_that_differs_from_the_paper_profile() -> None:
    table = scale_comparison(RESULTS)
    assert (table["paper profile"] != table["this run"]).all()
    core = table[table["claim"] == "1. core nib"].set_index("parameter")
    assert core.loc["backbone", "paper profile"] == "t5-large"
    assert core.loc["calibration_steps", "this run"] == "300"
    assert "candidate_seeds" not in core.index, "a parameter the run shares with the paper profile is not listed"


def test_the_summary_gives_every_gate_in_words() -> None:
    """The reasons column says "fails the NIB" / "raises held-out perplexity", never an outcome code."""
    reasons = " ".join(str(why) for why in summary_table(RESULTS)["why"])
    assert "bare backbone" in reasons
    assert not re.search(r"\b(PASS|FAIL)s?\b", reasons), "an outcome code instead of a verb"
