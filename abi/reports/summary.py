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
import re
from pathlib import Path
from types import ModuleType

import pandas as pd

from abi.experiments import claim_names, stats_module
from abi.pipeline import claim_of, notebook_names
from abi.results import load_result

NOT_TESTABLE = "not testable here"
COLUMNS = ("claim", "figure", "published", "ours", "verdict", "why", "claim verdict")


def _stats_module(claim: str) -> ModuleType | None:
    """The claim's stats module; report notebooks (the summary, the cost appendix) have none."""
    return stats_module(claim) if claim in claim_names() else None


def _rows_of(notebook: str, stats: ModuleType, results_dir: Path) -> list[dict]:
    claim = claim_of(notebook)
    path = results_dir / f"{claim}.json"
    if not path.is_file():
        label = f"{int(notebook[:2])}. {claim.replace('_', ' ')}"
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
    per_claim = table.groupby("claim", sort=False)["claim verdict"].first()
    return {verdict: int((per_claim == verdict).sum()) for verdict in dict.fromkeys(per_claim)}


def glue_name(verdict: str) -> str:
    """``passes, but not above every floor`` -> ``summary_passes_but_not_above_every_floor``."""
    return "summary_" + re.sub(r"\W+", "_", verdict).strip("_")
