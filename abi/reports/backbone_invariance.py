"""Tables and verdict text of claim 4 for the book, computed from its result file only."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from abi.experiments.backbone_invariance_stats import (
    ARM_LABELS,
    FORMULA_LABELS,
    FORMULAS,
    ORACLE_LABELS,
    ORACLES,
    PUBLISHED,
    claim_verdict,
    faq_efficacy,
    release_code_efficacy,
)
from abi.reports.formatting import interval

_T5, _GPT2 = PUBLISHED["t5-large"], PUBLISHED["gpt2-medium"]


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %" if value is not None and np.isfinite(value) else "undefined"


def _range(values: list[float], digits: int = 2) -> str:
    return f"{min(values):.{digits}f} to {max(values):.{digits}f}"


def gate_table(result: dict[str, Any]) -> pd.DataFrame:
    """Per setting: the regime gate, the update gate of each arm, and the row's verdict."""
    rows = []
    for name, gate in result["regime_gates"].items():
        updates = result["update_gates"][name]
        row = {
            "setting": name,
            "module lowers domain ppl by": _pct(gate["module_ppl_reduction"]),
            "bare B vs module (NIB)": gate["bare_backbone_nib"],
            "regime testable": "yes" if gate["testable"] else "no",
        }
        for arm, arm_gate in updates.items():
            n_take = sum(g["takes"] for g in arm_gate["updates"].values())
            row[f"{ARM_LABELS[arm]}: updates that take"] = f"{n_take} of {len(arm_gate['updates'])}"
        row["verdict"] = result["row_verdicts"][name]
        rows.append(row)
    return pd.DataFrame(rows).set_index("setting")


def update_table(result: dict[str, Any], setting: str) -> pd.DataFrame:
    """Did each update take? Prose and domain perplexity of B and B', per update."""
    rows = []
    for arm, arm_gate in result["update_gates"][setting].items():
        for update, gate in arm_gate["updates"].items():
            rows.append(
                {
                    "update": f"{ARM_LABELS[arm]}, seed {update}",
                    "prose ppl, B": round(gate["prose_ppl_before"], 2),
                    "prose ppl, B'": round(gate["prose_ppl_after"], 2),
                    "domain ppl, raw B": round(gate["domain_ppl_before"], 2),
                    "domain ppl, raw B'": round(gate["domain_ppl_after"], 2),
                    "domain change": _pct(gate["domain_change"]),
                    "update takes": "yes" if gate["takes"] else "no",
                }
            )
    return pd.DataFrame(rows).set_index("update")


def perplexity_table(result: dict[str, Any], setting: str) -> pd.DataFrame:
    """Held-out domain perplexity of every condition: B's with 95 % window-bootstrap intervals, B''s as
    the range over the seed grid (each cell is one update seed and module seed)."""
    stats = result["setting_stats"][setting]
    ppl = stats["ppl"]
    rows = [{"condition": "raw B", "perplexity": interval(ppl["B/raw"], digits=2)}]
    modules = [k for k in ppl if k.startswith("B/module/")]
    for key in modules:
        rows.append(
            {"condition": f"B + module (seed {key.rsplit('/', 1)[1]})", "perplexity": interval(ppl[key], digits=2)}
        )
    rows.append({"condition": "B + fresh module (original's oracle)", "perplexity": interval(ppl["B/fresh"], digits=2)})
    for arm, cells in stats["cell_ppl"].items():
        for kind, label in (
            ("raw", "raw B'"),
            ("zero_shot", "B' + old module (zero-shot)"),
            ("oracle", "B' + fresh module (our oracle)"),
        ):
            values = [cell[kind] for cell in cells.values()]
            rows.append(
                {
                    "condition": f"{label}, {ARM_LABELS[arm]}",
                    "perplexity": f"mean {np.mean(values):.2f} (range {_range(values)}, {len(values)} cells)",
                }
            )
    return pd.DataFrame(rows).set_index("condition")


def efficacy_table(result: dict[str, Any]) -> pd.DataFrame:
    """Both formulas under both oracles, per setting and arm, with the published figures beside."""
    rows = []
    for name, stats in result["setting_stats"].items():
        for arm, record in stats["efficacy"].items():
            for oracle in ORACLES:
                for formula in FORMULAS:
                    value = record[oracle][formula]
                    rows.append(
                        {
                            "setting": name,
                            "update": ARM_LABELS[arm],
                            "oracle": ORACLE_LABELS[oracle],
                            "formula": FORMULA_LABELS[formula],
                            "efficacy % (95% CI)": interval(value, digits=1, scale=100),
                            "denominator ppl (95% CI)": interval(record[oracle]["denominator"], digits=3),
                            "ill-conditioned": "yes" if record[oracle]["ill_conditioned"] else "no",
                            "verdict": value["verdict"],
                        }
                    )
    published = [
        ("published T5-large", "FAQ", faq_efficacy(_T5["raw_ppl"], _T5["zero_shot_ppl"], _T5["oracle_ppl"])),
        ("published GPT-2-medium", "FAQ", faq_efficacy(_GPT2["raw_ppl"], _GPT2["zero_shot_ppl"], _GPT2["oracle_ppl"])),
        (
            "published GPT-2-medium",
            "release code",
            release_code_efficacy(
                _GPT2["raw_ppl"], _GPT2["zero_shot_ppl"], _GPT2["oracle_baseline_ppl"], _GPT2["oracle_ppl"]
            ),
        ),
    ]
    for label, formula, value in published:
        rows.append(
            {
                "setting": label,
                "update": "protected (release)",
                "oracle": "release's",
                "formula": FORMULA_LABELS["faq" if formula == "FAQ" else "release_code"],
                "efficacy % (95% CI)": f"{100 * value:.1f} (from its reported perplexities)",
            }
        )
    return pd.DataFrame(rows).fillna("").set_index(["setting", "update", "oracle", "formula"])


def verdict_sentence(result: dict[str, Any]) -> str:
    """A paragraph stating the outcome with its numbers, one sentence group per setting."""
    parts = [f"**Verdict at the `{result['profile']}` profile: {claim_verdict(result)}.**"]
    params = result["parameters"]
    for name, stats in result["setting_stats"].items():
        gate, updates = result["regime_gates"][name], result["update_gates"][name]["plain"]
        ours = stats["efficacy"]["plain"]["ours"]["faq"]
        changes = [g["domain_change"] for g in updates["updates"].values()]
        parts.append(
            f"In the {name} setting the modules lower held-out domain perplexity on B by "
            f"{_pct(gate['module_ppl_reduction'])}, and the bare backbone's NIB against them is a "
            f"{gate['bare_backbone_nib']} (regime {'testable' if gate['testable'] else 'not testable'}). The "
            f"unprotected update changes the bare domain perplexity by {_range([100 * c for c in changes], 1)} %; "
            f"{sum(g['takes'] for g in updates['updates'].values())} of {len(changes)} updates take. "
            "Efficacy with our oracle "
            f"(FAQ formula, {len(params['update_seeds'])} update seeds x {len(params['module_seeds'])} module seeds): "
            f"{interval(ours, digits=1, scale=100)} % ({ours['verdict']}); row verdict: {result['row_verdicts'][name]}."
        )
    return " ".join(parts)


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the book's summary table: per setting, efficacy under our oracle and the row's verdict."""
    published = result["published"]
    rows = []
    for name, stats in result["setting_stats"].items():
        ours = stats["efficacy"]["plain"]["ours"]["faq"]
        rows.append(
            {
                "claim": "4. backbone-update invariance",
                "figure": f"{name}: transfer efficacy, unprotected update, our oracle (FAQ formula)",
                "published": f"T5-large {published['t5-large']['efficacy']:.1%}, "
                f"GPT-2-medium {published['gpt2-medium']['efficacy']:.1%} (pass at 50%)",
                "ours": f"{interval(ours, digits=1, scale=100)} %, {ours['verdict']}",
                "verdict": result["row_verdicts"][name],
                "why": "; ".join(f"{setting}: {verdict}" for setting, verdict in result["row_verdicts"].items()),
            }
        )
    return rows
