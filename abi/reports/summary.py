"""The summary chapter: every claim's published figures beside ours, with the claim's verdict and the reason.

A claim's verdict is the one its own chapter states: ``abi.experiments.<claim>_stats.claim_verdict``,
which reads the verdict stored in the result file where the claim derives one (claim 1). Its rows
(published figure, ours, the reason, and the row's own verdict where the result stores row verdicts) come
from ``abi.reports.<claim>.summary_rows``; a row without its own verdict shows the claim's. A claim whose
result file does not exist yet gets one "not testable here" row, so the table always lists every claim.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pandas as pd

from abi.claims import claim_modules, stats_module
from abi.experiments import claim_names
from abi.pipeline import claim_of, notebook_names
from abi.reports.gate_words import bare_verb, ppl_change
from abi.results import load_result

NOT_TESTABLE = "not testable here"
COLUMNS = ("claim", "figure", "published", "ours", "verdict", "why", "claim verdict")


def _stats_module(claim: str) -> ModuleType | None:
    """The claim's stats module; report notebooks (the summary, the cost appendix) have none."""
    return stats_module(claim) if claim in claim_names() else None


def _claim_label(notebook: str) -> str:
    """``02_cross_architecture`` -> ``2. cross architecture``: a claim's name where its result gives none."""
    return f"{int(notebook[:2])}. {claim_of(notebook).replace('_', ' ')}"


def _claim_verdicts(table: pd.DataFrame) -> pd.Series:
    """Each claim's verdict (one per claim, claims in table order)."""
    return table.groupby("claim", sort=False)["claim verdict"].first()


def _rows_of(notebook: str, stats: ModuleType, results_dir: Path) -> list[dict]:
    claim = claim_of(notebook)
    path = results_dir / f"{claim}.json"
    if not path.is_file():
        label = _claim_label(notebook)
        return [
            {
                "claim": label,
                "figure": "-",
                "published": "-",
                "ours": "-",
                "verdict": NOT_TESTABLE,
                "why": f"no result file {path.name}: its notebook has not run",
                "claim verdict": NOT_TESTABLE,
            }
        ]
    result = load_result(path)
    verdict = stats.claim_verdict(result)
    report = importlib.import_module(f"abi.reports.{claim}")
    return [
        {column: {"verdict": verdict, **row, "claim verdict": verdict}[column] for column in COLUMNS}
        for row in report.summary_rows(result)
    ]


def summary_table(results_dir: Path) -> pd.DataFrame:
    """All rows, claims in notebook order; every result file is verified as it is read."""
    rows = []
    for name in notebook_names():
        stats = _stats_module(claim_of(name))
        if stats is not None:
            rows.extend(_rows_of(name, stats, Path(results_dir)))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def verdict_counts(table: pd.DataFrame) -> dict[str, int]:
    """How many claims got each verdict (one verdict per claim), verdicts in the order the claims first give them."""
    per_claim = _claim_verdicts(table)
    return {verdict: int((per_claim == verdict).sum()) for verdict in dict.fromkeys(per_claim)}


def at_a_glance(table: pd.DataFrame) -> pd.DataFrame:
    """One row per claim with its verdict: the front page's table (glued as ``summary_at_a_glance``), read from
    the same rows as the summary's (whose "why, claim by claim" gives the reasons)."""
    return _claim_verdicts(table).reset_index(name="verdict")


def _row_text(row_verdict: object, labels: dict[str, str] | None = None) -> str:
    """A setting's row verdict, or its sub-claims' verdicts (``{"sub-claim": verdict}``, named by the claim's
    ``SUB_CLAIM_LABELS`` where it has them) in one phrase."""
    if isinstance(row_verdict, dict):
        names = labels or {}
        return "; ".join(
            f"{names.get(name, name.replace('_', ' '))}: **{verdict}**" for name, verdict in row_verdict.items()
        )
    return f"**{row_verdict}**"


def gated_setting_finding(result: dict, setting: str, labels: dict[str, str] | None = None) -> str:
    """One setting of any gated claim in a sentence: its row verdict(s), its regime gate's numbers and,
    for a claim that also gates its backbone updates (``update_gates``), how many updates took."""
    gate = result["regime_gates"][setting]
    return (
        f"*{setting}*: {_row_text(result.get('row_verdicts', {}).get(setting, '-'), labels)} (the reference "
        f"module {ppl_change(gate['module_ppl_reduction'])}; the bare backbone "
        f"{bare_verb(gate['bare_backbone_nib'])} the NIB against it{_update_gate_text(result, setting)})"
    )


def _update_gate_text(result: dict, setting: str) -> str:
    """ "; backbone updates that take (the update gate): 1 of 3 plain, 0 of 1 protected" (empty without
    update gates): an update takes when it lowers prose perplexity and moves the bare domain perplexity enough."""
    arms = result.get("update_gates", {}).get(setting)
    if not arms:
        return ""
    counts = ", ".join(
        f"{sum(u['takes'] for u in arm['updates'].values())} of {len(arm['updates'])} {name}"
        for name, arm in arms.items()
    )
    return f"; backbone updates that take (the update gate): {counts}"


def _setting_finding(claim: str, result: dict, setting: str) -> str:
    """The claim's own sentence for a setting where its report defines one (``setting_finding``), else the
    generic one."""
    report = importlib.import_module(f"abi.reports.{claim}")
    if hasattr(report, "setting_finding"):
        return report.setting_finding(result, setting)
    return gated_setting_finding(result, setting, getattr(stats_module(claim), "SUB_CLAIM_LABELS", None))


def findings(table: pd.DataFrame, results_dir: Path) -> str:
    """The front page's findings, in Markdown, from the result files: each claim's verdict and, for a claim
    whose result stores regime gates, each setting's numbers. A result written before the gates
    existed is said to be so."""
    lines = []
    for name in notebook_names():
        claim = claim_of(name)
        if _stats_module(claim) is None:
            continue
        rows = table[table["claim"].str.startswith(f"{int(name[:2])}.")]
        label, verdict = rows["claim"].iloc[0], rows["claim verdict"].iloc[0]
        path = Path(results_dir) / f"{claim}.json"
        result = load_result(path) if path.is_file() else None
        if result is None:
            lines.append(f"- **{label}: {verdict}** (its notebook has not been run).")
        elif "regime_gates" in result:
            settings = "; ".join(_setting_finding(claim, result, setting) for setting in result["regime_gates"])
            lines.append(f"- **{label}: {verdict}.** {settings}.")
        else:
            lines.append(
                f"- **{label}: {verdict}**, from a result written before regime gates existed (no gate, earlier "
                "correction site): to be re-run."
            )
    return "\n".join(lines)


def _compact(value: object) -> str:
    """A parameter value as a table cell: lists joined, nested values as short JSON."""
    if isinstance(value, list):
        return ", ".join(_compact(item) for item in value) if value else "(none)"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True) if value else "(none)"
    return str(value)


def scale_comparison(results_dir: Path) -> pd.DataFrame:
    """Every parameter whose value in a result file differs from the claim's ``paper`` profile (the
    release's models and sizes): claim, parameter, the paper profile's value, this run's value."""
    from abi.profiles import claim_profiles

    claim_modules()  # each registers its profiles
    rows = []
    for name in notebook_names():
        claim = claim_of(name)
        path = Path(results_dir) / f"{claim}.json"
        if _stats_module(claim) is None or not path.is_file():
            continue
        ran, paper = load_result(path)["parameters"], claim_profiles(claim)["paper"]
        label = _claim_label(name)
        for parameter, value in paper.items():
            if parameter in ran and ran[parameter] != value:
                rows.append(
                    {
                        "claim": label,
                        "parameter": parameter,
                        "paper profile": _compact(value),
                        "this run": _compact(ran[parameter]),
                    }
                )
    return pd.DataFrame(rows, columns=["claim", "parameter", "paper profile", "this run"])


def glue_name(verdict: str) -> str:
    """``passes, but not above every floor`` -> ``summary_passes_but_not_above_every_floor``."""
    return "summary_" + re.sub(r"\W+", "_", verdict).strip("_")
