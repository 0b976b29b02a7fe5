"""Tables and verdict text of claim 4 for the book, computed from its result file only."""

from __future__ import annotations

from typing import Any

import pandas as pd

from abi.experiments.backbone_invariance_stats import PUBLISHED, claim_verdict, condition_label
from abi.reports.formatting import interval, is_defined, percent_interval

_T5_LARGE, _GPT2_MEDIUM = PUBLISHED["t5-large"], PUBLISHED["gpt2-medium"]
# The release's T5-large efficacy denominator: raw B' perplexity minus the oracle's.
_T5_LARGE_DENOMINATOR = _T5_LARGE["raw_ppl"] - _T5_LARGE["oracle_ppl"]


def _percent(rate: dict[str, Any]) -> str:
    return f"{100 * rate['estimate']:.1f} %" if is_defined(rate.get("estimate")) else "undefined (no such positions)"


def perplexity_table(result: dict[str, Any], name: str) -> pd.DataFrame:
    """Held-out domain perplexity per condition (95 % window-bootstrap interval), published T5-large beside."""
    reference = {
        "plain/raw": _T5_LARGE["raw_ppl"],
        "plain/zero_shot": _T5_LARGE["zero_shot_ppl"],
        "B/fresh": _T5_LARGE["oracle_ppl"],
    }
    rows = [
        {
            "condition": condition_label(condition),
            "perplexity (95% CI)": interval(perplexity, digits=2),
            "published (T5-large)": reference.get(condition, ""),
        }
        for condition, perplexity in result["summary"][name]["ppl"].items()
    ]
    return pd.DataFrame(rows).set_index("condition")


def efficacy_table(result: dict[str, Any]) -> pd.DataFrame:
    """Efficacy under both oracles per backbone and update, with the published figures beside."""
    rows = []
    for name, summary in result["summary"].items():
        for update, by_oracle in summary["efficacy"].items():
            for oracle, efficacy in by_oracle.items():
                rows.append(
                    {
                        "backbone": name,
                        "update": update,
                        "oracle": "fresh module on B' (ours)" if oracle == "ours" else "fresh module on B (original's)",
                        "efficacy % (95% CI)": interval(efficacy, digits=1, scale=100),
                        "denominator (ppl) (95% CI)": interval(efficacy["denominator"], digits=3),
                        "ill-conditioned": efficacy["ill_conditioned"],
                        "verdict": efficacy["verdict"],
                        "release's rule (point >= 50%)": "PASS" if efficacy["point_pass"] else "FAIL",
                    }
                )
    rows.append(
        {
            "backbone": "published T5-large",
            "oracle": "fresh module on B (original's)",
            "efficacy % (95% CI)": f"{100 * _T5_LARGE['efficacy']:.1f}",
            "denominator (ppl) (95% CI)": f"{_T5_LARGE_DENOMINATOR:.3f}",
            "verdict": "PASS",
        }
    )
    rows.append(
        {
            "backbone": "published GPT-2-medium",
            "oracle": "fresh module on B (original's)",
            "efficacy % (95% CI)": f"{100 * _GPT2_MEDIUM['efficacy']:.1f}",
            "verdict": "PASS",
        }
    )
    return pd.DataFrame(rows).fillna("").set_index(["backbone", "update", "oracle"])


def update_table(result: dict[str, Any], name: str) -> pd.DataFrame:
    """Did the update change the model? Prose perplexity before/after and flip rates."""
    summary = result["summary"][name]
    rows = []
    for update in result["backbones"][name]["updates"]:
        flips, gains = summary["negative_flip_rate"][update], summary["positive_flip_rate"][update]
        rows.append(
            {
                "update": update,
                "prose ppl, B (95% CI)": interval(summary["prose_ppl"]["B"], digits=2),
                "prose ppl, B' (95% CI)": interval(summary["prose_ppl"][update], digits=2),
                "negative flips, module % (95% CI)": interval(flips["module"], digits=1, scale=100),
                "negative flips, bare backbone %": interval(flips["raw"], digits=1, scale=100),
                "positive flips, module %": interval(gains["module"], digits=1, scale=100),
                "top-5 overlap, B'+old module vs B+module": round(
                    result["comparisons"][f"{name}/{update}/module"]["summary"]["top5"], 4
                ),
            }
        )
    return pd.DataFrame(rows).set_index("update")


def verdict_sentence(result: dict[str, Any]) -> str:
    """A paragraph stating the outcome with its numbers, one sentence group per backbone."""
    parts = [f"**Verdict at the `{result['profile']}` profile: {claim_verdict(result)}.**"]
    for name, summary in result["summary"].items():
        efficacy = summary["efficacy"]["plain"]
        ours, original = efficacy["ours"], efficacy["original"]
        ppl = summary["ppl"]
        flips = summary["negative_flip_rate"]["plain"]
        parts.append(
            f"On {name}, the prose update moved the prose perplexity from {summary['prose_ppl']['B']['estimate']:.2f} "
            f"to {summary['prose_ppl']['plain']['estimate']:.2f}. Held-out code perplexity: raw B "
            f"{ppl['B/raw']['estimate']:.2f}, B + module {ppl['B/module']['estimate']:.2f}, raw B' "
            f"{ppl['plain/raw']['estimate']:.2f}, B' + old module {ppl['plain/zero_shot']['estimate']:.2f}, B' + fresh "
            f"module {ppl['plain/oracle']['estimate']:.2f}. Efficacy with the oracle on the updated backbone: "
            f"{interval(ours, digits=1, scale=100)} % ({ours['verdict']}); with the original's oracle on the old "
            f"backbone: {interval(original, digits=1, scale=100)} % ({original['verdict']}; published "
            f"{100 * _T5_LARGE['efficacy']:.1f} % on T5-large, {100 * _GPT2_MEDIUM['efficacy']:.1f} % on "
            f"GPT-2-medium, pass at {100 * PUBLISHED['pass_efficacy']:.0f} %). Of the positions the module predicted "
            f"correctly on B, {_percent(flips['module'])} are wrong on B' zero-shot (bare backbone: "
            f"{_percent(flips['raw'])})."
        )
    return " ".join(parts)


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the book's summary table: published efficacies beside ours, per backbone, and the claim's verdict."""
    published = result["published"]
    rows = []
    for name, summary in result["summary"].items():
        for oracle, oracle_text in (
            ("ours", "our oracle (fresh module on B')"),
            ("original", "original's oracle (fresh module on B)"),
        ):
            efficacy = summary["efficacy"]["plain"][oracle]
            rows.append(
                {
                    "claim": "4. backbone-update invariance",
                    "figure": f"{name}: transfer efficacy, {oracle_text}",
                    "published": f"T5-large {published['t5-large']['efficacy']:.1%}, "
                    f"GPT-2-medium {published['gpt2-medium']['efficacy']:.1%} (pass at 50%)",
                    "ours": f"{percent_interval(efficacy)}, {efficacy['verdict']}",
                }
            )
    verdict = claim_verdict(result)
    why = "; ".join(f"{name}: {v['plain']['ours']} under our oracle" for name, v in result["verdicts"].items())
    return [{**row, "verdict": verdict, "why": why} for row in rows]
