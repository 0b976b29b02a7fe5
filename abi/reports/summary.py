"""The summary chapter: every claim's published figures beside ours, with a verdict and the reason.

Each claim's report module (``abi.reports.<claim>``) provides ``summary_rows(result)``; a claim whose
result file does not exist yet gets one "not testable here" row, so the table always lists all four.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pandas as pd

from abi.pipeline import claim_of, is_report, notebook_names
from abi.results import load_result

VERDICTS = ("reproduced", "not reproduced", "not testable here")


def _rows_of(notebook: str, results_dir: Path) -> list[dict]:
    claim = claim_of(notebook)
    path = results_dir / f"{claim}.json"
    if not path.is_file():
        label = f"{int(notebook[:2])}. {claim.replace('_', ' ')}"
        return [{"claim": label, "figure": "-", "published": "-", "ours": "-",
                 "verdict": "not testable here", "why": f"no result file {path.name}: its notebook has not run"}]
    report = importlib.import_module(f"abi.reports.{claim}")
    return report.summary_rows(load_result(path))


def summary_table(results_dir: Path) -> pd.DataFrame:
    """All rows, claims in notebook order; every result file is verified as it is read."""
    rows = []
    for name in notebook_names():
        if not is_report(name):
            rows.extend(_rows_of(name, Path(results_dir)))
    table = pd.DataFrame(rows)
    unknown = set(table["verdict"]) - set(VERDICTS)
    if unknown:
        raise ValueError(f"summary verdicts must be one of {VERDICTS}, got {sorted(unknown)}")
    return table


def verdict_counts(table: pd.DataFrame) -> dict[str, int]:
    """How many claims got each verdict (one verdict per claim)."""
    per_claim = table.groupby("claim", sort=False)["verdict"].first()
    return {verdict: int((per_claim == verdict).sum()) for verdict in VERDICTS}
