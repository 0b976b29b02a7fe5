"""Tables and verdict text of claim 1 (core NIB) for the book, from its result file only (no number typed
by hand). Verdicts, gates and row verdicts are read from the result, where
:func:`abi.experiments.core_nib_stats.derive` stored them."""

from __future__ import annotations

from typing import Any

import pandas as pd

from abi.experiments.core_nib_stats import setting_view
from abi.nib import CORE_METRICS
from abi.plotting.core_nib import ARM_LABELS, setting_label
from abi.reports.formatting import METRIC_LABELS, compact_number, count_of, interval
from abi.reports.gate_words import bare_verb, ppl_change

CLAIM_LABEL = "1. core NIB"


def regime_table(result: dict[str, Any]) -> pd.DataFrame:
    """One row per setting: the gate's inputs (perplexities, the bare backbone's NIB), whether it is
    testable, and the setting's verdict."""
    rows = []
    for setting in result["settings"]:
        view = setting_view(result, setting)
        gate, bare = view["gate"], view["comparisons"]["no_module"]
        rows.append(
            {
                "setting": setting_label(result, setting),
                "bare perplexity": round(bare["summary"]["ppl"], 2),
                "anchor perplexity": round(view["anchor_ppl"]["held_out"], 2),
                "reduction": f"{gate['module_ppl_reduction']:.1%}",
                "bare backbone vs anchor: top-5": round(bare["summary"]["top5"], 4),
                "bare backbone NIB": gate["bare_backbone_nib"],
                "testable": "yes" if gate["testable"] else "no",
                "verdict": view["row_verdict"],
            }
        )
    return pd.DataFrame(rows).set_index("setting")


def official_table(result: dict[str, Any], setting: str) -> pd.DataFrame:
    """The release's official protocol in one setting, one row per candidate seed, the published row beside."""
    view = setting_view(result, setting)
    rows = []
    for name, comparison in view["official"].items():
        if name.startswith("candidate/"):
            row = {"run": f"ours, seed {name.split('/')[1]}"}
            row.update({METRIC_LABELS[m]: comparison["summary"][m] for m in CORE_METRICS})
            row["verdict"] = comparison["verdict"]
            rows.append(row)
    published = result["published"]["official"]
    rows.append(
        {"run": "published (T5-large)", **{METRIC_LABELS[m]: published[m] for m in CORE_METRICS}, "verdict": "PASS"}
    )
    return pd.DataFrame(rows).set_index("run").round(4)


def arm_label(name: str) -> str:
    """A comparison's name as readers read it: ``random_calibrated/2`` -> ``random module + calibration
    (floor), seed 2`` (the figure's wording, on one line)."""
    group, _, seed = name.partition("/")
    label = ARM_LABELS.get(group, group.replace("_", " ")).replace("\n", " ")
    return f"{label}, seed {seed}" if seed else label


def arm_table(result: dict[str, Any], setting: str) -> pd.DataFrame:
    """Held-out NIB and perplexity of every arm in one setting: estimate (95% CI) per metric, and the
    top-5 / top-1 on the effect positions (where the anchor's top-1 differs from the bare backbone's)."""
    view = setting_view(result, setting)
    rows = []
    for name, comparison in view["comparisons"].items():
        row = {"arm": arm_label(name)}
        for metric in CORE_METRICS:
            row[METRIC_LABELS[metric]] = interval(comparison["ci"][metric])
        row["perplexity"] = round(comparison["summary"]["ppl"], 3)
        row["verdict"] = comparison["verdict"]
        effect = view["effect_nib"][name]
        if "summary" in effect:
            row["effect positions: top-5"] = round(effect["summary"]["top5"], 4)
            row["effect positions: top-1"] = round(effect["summary"]["top1"], 4)
            row["effect positions: verdict"] = effect["verdict"]
        rows.append(row)
    table = pd.DataFrame(rows).set_index("arm").astype(object)
    table.loc["anchor itself", "perplexity"] = round(view["anchor_ppl"]["held_out"], 3)
    return table.fillna("")


def dose_table(result: dict[str, Any]) -> pd.DataFrame:
    """Dose-response of every setting that has one: top-5 with the anchor [95% seed interval] per dose."""
    rows = []
    for setting in result["settings"]:
        dose = result["setting_stats"][setting]["dose_response"]
        for d, stats in sorted(dose.get("doses", {}).items(), key=lambda item: int(item[0])):
            rows.append(
                {
                    "setting": setting_label(result, setting),
                    "calibration windows": int(d),
                    "trained candidate": interval(stats["trained"]),
                    "untrained module": interval(stats["untrained"]),
                    "trained - untrained": interval(stats["trained_minus_untrained"]),
                    "uncalibrated candidate": interval(dose["uncalibrated_top5"]),
                }
            )
    if not rows:
        return pd.DataFrame({"note": ["no setting of this run has a dose-response"]})
    return pd.DataFrame(rows).set_index(["setting", "calibration windows"])


def setting_sentence(result: dict[str, Any], setting: str) -> str:
    """The outcome of one setting with its numbers."""
    view = setting_view(result, setting)
    seeds = [str(s) for s in view["candidate_seeds"]]
    gate, contrasts = view["gate"], view["contrasts"]
    top5 = view["groups"]["candidate"]["top5"]
    held = view["verdicts"]["held_out_pass_per_seed"]
    ceiling = view["comparisons"]["ceiling"]["summary"]["top5"]
    random_floor = view["groups"]["random_calibrated"]["top5"]["estimate"]
    bare = view["comparisons"]["no_module"]["summary"]["top5"]
    effect = view["effect_nib"]
    effect_text = ""
    first = f"candidate/{seeds[0]}"
    if "summary" in effect[first] and "summary" in effect.get("no_module", {}):
        effect_text = (
            f" On the {effect[first]['fraction_of_positions']:.1%} of positions where the anchor changes "
            f"the bare backbone's top-1, the candidate (seed {seeds[0]}) reaches top-1 "
            f"{effect[first]['summary']['top1']:.3f} with the anchor and the untrained calibrated module "
            f"{effect[f'random_calibrated/{seeds[0]}']['summary']['top1']:.3f}."
        )
    return (
        f"**{setting_label(result, setting)}: {view['row_verdict']}.** The anchor "
        f"{ppl_change(gate['module_ppl_reduction'], digits=1)} and the bare backbone "
        f"{bare_verb(gate['bare_backbone_nib'])} "
        f"the NIB against it (top-5 {bare:.4f}), so the setting is {'' if gate['testable'] else 'not '}testable. "
        f"The held-out NIB passes for {count_of(held[s] == 'PASS' for s in seeds)} candidate seeds; top-5 with the "
        f"anchor {top5['estimate']:.4f} (mean over seeds). Second anchor (seed ceiling) {ceiling:.4f}; untrained "
        f"module through the identical calibration {random_floor:.4f}, beaten for "
        f"{count_of(contrasts[s]['beats_random_calibrated']['beats'] for s in seeds)} seeds; the bare backbone "
        f"beaten for {count_of(contrasts[s]['beats_no_module']['beats'] for s in seeds)}, the uncalibrated "
        f"candidate for {count_of(contrasts[s]['beats_uncalibrated']['beats'] for s in seeds)}.{effect_text}"
    )


def verdict_sentence(result: dict[str, Any]) -> str:
    """The claim's verdict (stored in the result) and one paragraph per setting."""
    return "\n\n".join(
        [
            f"**Verdict at the `{result['profile']}` profile ({result['backbone']['name']}): {result['verdict']}** "
            "(combining the settings at the release's correction site; a setting that fails its regime gate "
            "counts as not testable).",
            *(setting_sentence(result, setting) for setting in result["settings"]),
        ]
    )


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the book's summary table: per setting, the held-out top-5 beside the published official
    figure, with that setting's own verdict (stored in the result) and its gate as the reason."""
    published = result["published"]["official"]
    rows = []
    for setting in result["settings"]:
        view = setting_view(result, setting)
        seeds = [str(s) for s in view["candidate_seeds"]]
        held = view["groups"]["candidate"]["top5"]
        gate = view["gate"]
        random_floor = view["groups"]["random_calibrated"]["top5"]["estimate"]
        passes = [view["verdicts"]["held_out_pass_per_seed"][s] == "PASS" for s in seeds]
        rows.append(
            {
                "claim": CLAIM_LABEL,
                "figure": f"top-5 with the anchor, {setting_label(result, setting)}: held-out mean over seeds",
                "published": compact_number(published["top5"]),
                "ours": compact_number(held["estimate"]),
                "verdict": view["row_verdict"],
                "why": (
                    f"module {ppl_change(gate['module_ppl_reduction'])}, bare backbone "
                    f"{bare_verb(gate['bare_backbone_nib'])} the NIB "
                    f"({'testable' if gate['testable'] else 'not testable'}); "
                    f"NIB passes for {count_of(passes)} seeds; untrained module + calibration reaches "
                    f"{random_floor:.4f}"
                ),
            }
        )
    return rows


def setting_finding(result: dict[str, Any], setting: str) -> str:
    """One setting in a sentence for the front page: its verdict, the gate's numbers, agreement, floor, ceiling."""
    view = setting_view(result, setting)
    gate, top5 = view["gate"], view["groups"]["candidate"]["top5"]
    floor = view["groups"]["random_calibrated"]["top5"]["estimate"]
    ceiling = view["comparisons"]["ceiling"]["summary"]["top5"]
    seeds = len(result["settings"][setting].get("candidate_seeds", []))
    spread = "one seed" if seeds == 1 else f"{top5['low']:.3f} to {top5['high']:.3f}, {seeds} seeds"
    return (
        f"*{setting_label(result, setting)}*: **{view['row_verdict']}** (the module "
        f"{ppl_change(gate['module_ppl_reduction'])}; "
        f"the bare backbone {bare_verb(gate['bare_backbone_nib'])} the NIB "
        f"against it; candidates' held-out top-5 with the anchor {top5['estimate']:.3f} ({spread}) against the "
        f"threshold 0.86; an untrained module through the same calibration {floor:.3f}; seed ceiling "
        f"{ceiling:.3f})"
    )
