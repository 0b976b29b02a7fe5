"""Tables and verdict text of claim 1 (core NIB) for the book, from its result file only (no number typed
by hand). The verdict itself is :func:`abi.experiments.core_nib_stats.claim_verdict`."""

from __future__ import annotations

from typing import Any

import pandas as pd

from abi.experiments.core_nib_stats import claim_verdict
from abi.nib import CORE_METRICS
from abi.reports.formatting import METRIC_LABELS, compact_number, count_of, interval


def official_table(result: dict[str, Any]) -> pd.DataFrame:
    """The release's official protocol, one row per candidate seed, with the published row beside."""
    rows = []
    for name, comparison in result["official"].items():
        if name.startswith("candidate/"):
            row = {"run": f"ours, seed {name.split('/')[1]}"}
            row.update({METRIC_LABELS[m]: comparison["summary"][m] for m in CORE_METRICS})
            row["verdict"] = comparison["verdict"]
            rows.append(row)
    published = result["published"]["official"]
    rows.append({"run": "published (T5-large)", **{METRIC_LABELS[m]: published[m] for m in CORE_METRICS},
                 "verdict": "PASS"})
    return pd.DataFrame(rows).set_index("run").round(4)


def arm_table(result: dict[str, Any]) -> pd.DataFrame:
    """Held-out NIB and perplexity of every arm: estimate [95% CI] per metric."""
    rows = []
    for name, comparison in result["comparisons"].items():
        row = {"arm": name}
        for metric in CORE_METRICS:
            row[METRIC_LABELS[metric]] = interval(comparison["ci"][metric])
        row["perplexity"] = round(comparison["summary"]["ppl"], 3)
        row["verdict"] = comparison["verdict"]
        rows.append(row)
    table = pd.DataFrame(rows).set_index("arm")
    table.loc["anchor itself", "perplexity"] = round(result["anchor_ppl"]["held_out"], 3)
    return table.fillna("")


def verdict_sentence(result: dict[str, Any]) -> str:
    """A paragraph stating the outcome with its numbers."""
    seeds = [str(s) for s in result["parameters"]["candidate_seeds"]]
    top5 = result["groups"]["candidate"]["top5"]
    contrasts = result["contrasts"]
    official = result["verdicts"]["official_pass_per_seed"]
    held = result["verdicts"]["held_out_pass_per_seed"]
    ceiling = result["comparisons"]["ceiling"]["summary"]["top5"]
    random_floor = result["groups"]["random_calibrated"]["top5"]["estimate"]
    margin = result["parameters"]["ni_margin"]
    return (
        f"**Verdict at the `{result['profile']}` profile ({result['backbone']['name']}): "
        f"{claim_verdict(result)}.** "
        f"The official protocol passes for {count_of(official[s] == 'PASS' for s in seeds)} candidate seeds; "
        f"the held-out NIB passes for {count_of(held[s] == 'PASS' for s in seeds)}. "
        f"Held-out top-5 overlap with the anchor, mean over seeds: {top5['estimate']:.4f} "
        f"(95 % seed interval [{top5['low']:.4f}, {top5['high']:.4f}]; published "
        f"{result['published']['official']['top5']} on T5-large). "
        f"A second anchor trained with another seed reaches {ceiling:.4f} (the seed-noise ceiling); the candidate "
        f"is non-inferior to it at a margin of {margin} for "
        f"{count_of(contrasts[s]['non_inferior_to_ceiling']['non_inferior'] for s in seeds)} seeds. "
        f"An untrained module put through the identical calibration reaches {random_floor:.4f}; the candidate "
        f"beats it (one-sided 95 % bound above zero) for "
        f"{count_of(contrasts[s]['beats_random_calibrated']['beats'] for s in seeds)} seeds, the bare backbone "
        f"for {count_of(contrasts[s]['beats_no_module']['beats'] for s in seeds)}, and its own uncalibrated "
        f"state for {count_of(contrasts[s]['beats_uncalibrated']['beats'] for s in seeds)}."
    )


def summary_reason(result: dict[str, Any]) -> str:
    """Why the claim got its verdict, in one sentence for the summary chapter."""
    seeds = [str(s) for s in result["parameters"]["candidate_seeds"]]
    passes = [result["verdicts"]["held_out_pass_per_seed"][s] == "PASS" for s in seeds]
    held = all(passes)
    random_floor = result["groups"]["random_calibrated"]["top5"]["estimate"]
    no_module = result["comparisons"]["no_module"]
    beats_random = sum(result["contrasts"][s]["beats_random_calibrated"]["beats"] for s in seeds)
    reason = (f"the calibrated candidate passes NIB on held-out windows for {count_of(passes)} seeds; an untrained "
              f"module put through the same calibration reaches top-5 {random_floor:.4f} (the candidate beats it for "
              f"{beats_random} of {len(seeds)} seeds) and the bare backbone "
              f"{'also passes' if no_module['verdict'] == 'PASS' else 'fails'} with top-5 "
              f"{no_module['summary']['top5']:.4f}")
    if held and (no_module["verdict"] == "PASS" or beats_random < len(seeds)):
        reason += ", so at this scale a PASS does not show that the candidate's own training matters"
    return reason


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the book's summary table: every published figure of claim 1 beside ours, and the reason for
    the claim's verdict (the summary adds the verdict itself, from the claim's stats module)."""
    seeds = [str(s) for s in result["parameters"]["candidate_seeds"]]
    published = result["published"]["official"]
    reason = summary_reason(result)
    rows = []
    for metric in CORE_METRICS:
        values = [result["official"][f"candidate/{s}"]["summary"][metric] for s in seeds]
        held = result["groups"]["candidate"][metric]
        rows.append({
            "claim": "1. core NIB",
            "figure": f"{METRIC_LABELS[metric]}: official protocol (range over seeds); held-out mean [seed CI]",
            "published": compact_number(published[metric]),
            "ours": f"{compact_number(min(values))}-{compact_number(max(values))}; {compact_number(held['estimate'])} "
                    f"[{compact_number(held['low'])}, {compact_number(held['high'])}]",
            "why": reason,
        })
    return rows
