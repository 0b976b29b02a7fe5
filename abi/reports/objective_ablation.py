"""Tables and verdict text of claim 3 (objective ablation), from its result file only. Gates, row verdicts and
the verdict are read from the result, where :func:`abi.experiments.objective_ablation_stats.derive` stored them."""

from __future__ import annotations

from typing import Any

import pandas as pd

from abi.experiments.objective_ablation_stats import (
    LOSS_LABELS,
    SUB_CLAIM_LABELS,
    objective_label,
    setting_view,
)
from abi.plotting.core_nib import setting_label
from abi.reports import core_nib as core_nib_report
from abi.reports.formatting import METRIC_LABELS, interval, percent_interval
from abi.reports.gate_words import bare_verb, ppl_change

CLAIM_LABEL = "3. objective ablation"
_COLUMNS = {**METRIC_LABELS, **LOSS_LABELS}
_ORDER = ("top5", "top1", "js", "entropy_diff")
_DIRECTION = {
    "claimed": "shown in the claimed direction",
    "opposite": "the opposite is shown",
    "not shown": "the claimed direction is not shown",
}


def _significant(value: float) -> str:
    """Three significant digits: held-out losses span orders of magnitude across objectives."""
    return f"{value:.3g}"


def regime_table(result: dict[str, Any]) -> pd.DataFrame:
    """One row per setting: the gate's inputs and whether the setting can test the claim (claim 1's table;
    claim 3's verdicts are per sub-claim, so without claim 1's verdict column)."""
    return core_nib_report.regime_table(result).drop(columns="verdict")


def objectives_table(result: dict[str, Any]) -> pd.DataFrame:
    """The objectives of this run: what each computes, where its definition comes from, its LR rule."""
    derived = result["parameters"]["derived_lr"]
    rows = []
    for name, o in result["objectives"].items():
        rule = derived.get(name)
        rows.append(
            {
                "objective": objective_label(name),
                "source": o["source"],
                "loss": o["description"],
                "hyper-parameters": ", ".join(f"{k}={v:g}" for k, v in o["hyper"].items()) or "none",
                "learning rate": f"{rule['factor']:g} x {objective_label(rule['from'])}'s" if rule else "own sweep",
                "needs the frozen head": "yes" if o["needs_head"] else "no",
            }
        )
    return pd.DataFrame(rows).set_index("objective")


def sweep_table(result: dict[str, Any], setting: str) -> pd.DataFrame:
    """Validation top-5 of every swept LR per objective (* = chosen); derived LRs say where they come from."""
    view = setting_view(result, setting)
    selection = view["lr_selection"]
    lrs = sorted({e["lr"] for s in selection.values() for e in s.get("grid", [])})
    rows = []
    for name, chosen in selection.items():
        row: dict[str, Any] = {"objective": objective_label(name), "chosen LR": f"{chosen['best_lr']:g}"}
        by_lr = {e["lr"]: e for e in chosen.get("grid", [])}
        for lr in lrs:
            entry = by_lr.get(lr)
            mark = " *" if lr == chosen["best_lr"] else ""
            row[f"LR {lr:g}"] = f"{entry['validation_top5']:.4f}{mark}" if entry else ""
        if "derived_from" in chosen:
            row["note"] = f"not swept: {chosen['factor']:g} x {objective_label(chosen['derived_from'])}'s LR"
        else:
            row["note"] = f"best LR at the {chosen['best_at_grid_edge']} edge" if chosen["best_at_grid_edge"] else ""
        rows.append(row)
    return pd.DataFrame(rows).set_index("objective").fillna("")


def objective_table(result: dict[str, Any], setting: str) -> pd.DataFrame:
    """Held-out results per objective and per floor in one setting: mean over seeds (95 % seed interval)."""
    view = setting_view(result, setting)
    groups, cost, sources = view["groups"], view["cost"], result["objectives"]
    n_seeds = len(view["candidate_seeds"])
    rows = []
    for name, stats in groups.items():
        row: dict[str, Any] = {"arm": objective_label(name)}
        row["source"] = sources[name]["source"] if name in sources else "floor"
        row["LR"] = f"{view['lr_selection'][name]['best_lr']:g}" if name in view["lr_selection"] else ""
        for metric in (*_ORDER, "ppl"):
            row[_COLUMNS[metric]] = interval(stats[metric], 3 if metric == "ppl" else 4)
        row["held-out corrMSE"] = interval(stats["corr_mse"], 3)
        row["held-out KL"] = _significant(stats["kl_ac"]["estimate"])
        row["NIB PASS"] = f"{stats['n_pass']} of {n_seeds}"
        row["s / step"] = f"{cost[name]['median_s_per_step']:.3f}" if name in cost else ""
        rows.append(row)
    for name in ("no_module", "ceiling"):
        comparison = view["comparisons"][name]
        rows.append(
            {
                "arm": objective_label(name),
                "source": "floor" if name == "no_module" else "ceiling",
                **{_COLUMNS[m]: interval(comparison["ci"][m], 4) for m in _ORDER},
                "perplexity": f"{comparison['summary']['ppl']:.3f}",
                "held-out corrMSE": _significant(comparison["summary"]["corr_mse"]),
                "held-out KL": _significant(comparison["summary"]["kl_ac"]),
                "NIB PASS": comparison["verdict"],
            }
        )
    rows.append({"arm": "anchor itself", "perplexity": f"{view['anchor_ppl']['held_out']:.3f}"})
    return pd.DataFrame(rows).set_index("arm").fillna("")


def contrast_table(result: dict[str, Any], setting: str) -> pd.DataFrame:
    """corrMSE minus each other objective in held-out top-5: over seeds, and per seed (windows paired)."""
    rows = []
    for name, contrast in setting_view(result, setting)["contrasts"].items():
        row: dict[str, Any] = {
            "objective": objective_label(name),
            "corrMSE − it (seeds)": interval(contrast["over_seeds"]),
        }
        for seed, difference in contrast["per_seed"].items():
            row[f"seed {seed} (windows)"] = interval(difference)
        reversals = [
            d["five_window_reversal"] for d in contrast["per_seed"].values() if d["five_window_reversal"] is not None
        ]
        row["5-window sign flips"] = f"{sum(reversals) / len(reversals):.0%}" if reversals else ""
        row["reading"] = {"a_higher": "corrMSE higher", "b_higher": "it is higher"}.get(
            contrast["direction"], "not separable"
        )
        rows.append(row)
    return pd.DataFrame(rows).set_index("objective")


def _sub_claim_value(result: dict[str, Any], record: dict[str, Any]) -> str:
    if "interval" not in record:
        return f"NIB passes for {record['n_pass']} of {record['n_seeds']} seeds; beats every floor: " + (
            "yes" if record["beats_every_floor"] else "no"
        )
    value = interval(record["interval"])
    if record["statistic"] == "corr_mse_reduction":
        release = result["published"]["kl_corr_mse_reduction"]
        return f"relative reduction {percent_interval(record['interval'])} (the release: {release:.1%})"
    published = {
        "kl_raw": f"{result['published']['kl_top5_drop']:.3f}",
        "logit_mse": f"logit-MSE top-5 about {result['published']['logit_mse_top5']}, no ledger entry",
    }
    return f"top-5 difference {value} (the release: {published.get(record['objective'], 'hurt')})"


def row_verdict_table(result: dict[str, Any]) -> pd.DataFrame:
    """Every sub-claim in every setting: the statistic (mean over seeds, 95 % seed interval), what it shows
    and the row verdict (gated by the setting's regime gate)."""
    rows = []
    for setting in result["settings"]:
        view = setting_view(result, setting)
        for sub, record in view["sub_claims"].items():
            rows.append(
                {
                    "setting": setting_label(result, setting),
                    "sub-claim": SUB_CLAIM_LABELS[sub],
                    "ours": _sub_claim_value(result, record),
                    "reading": _DIRECTION.get(record.get("direction"), ""),
                    "verdict": view["row_verdict"][sub],
                }
            )
    return pd.DataFrame(rows).set_index(["setting", "sub-claim"])


def cost_table(result: dict[str, Any], setting: str) -> pd.DataFrame:
    """What a calibration step costs per objective, and whether the backbone was handed to it at all."""
    rows = [
        {
            "objective": objective_label(name),
            "wall s / step (median)": round(c["median_s_per_step"], 4),
            "CPU s / step (median)": round(c["median_cpu_s_per_step"], 4),
            "backbone passed to calibrate": "yes (frozen head)" if c["backbone_passed"] else "no (cached features)",
        }
        for name, c in setting_view(result, setting)["cost"].items()
    ]
    return pd.DataFrame(rows).set_index("objective")


def setting_sentence(result: dict[str, Any], setting: str) -> str:
    """The outcome of one setting: the gate, then each sub-claim's verdict with its number."""
    view = setting_view(result, setting)
    gate = view["gate"]
    parts = [
        f"**{setting_label(result, setting)}.** The anchor {ppl_change(gate['module_ppl_reduction'], 1)} and the "
        f"bare backbone {bare_verb(gate['bare_backbone_nib'])} the NIB against it, so the setting is "
        f"{'' if gate['testable'] else 'not '}testable."
    ]
    for sub, record in view["sub_claims"].items():
        reading = f"; {_DIRECTION[record['direction']]}" if "direction" in record else ""
        parts.append(
            f"{SUB_CLAIM_LABELS[sub]}: {_sub_claim_value(result, record)}{reading}: **{view['row_verdict'][sub]}**."
        )
    return " ".join(parts)


def verdict_paragraph(result: dict[str, Any]) -> str:
    """The chapter's closing paragraph: the stored verdict, each setting's rows, and the caveats."""
    params = result["parameters"]
    positions = params["chunk_len"] * params["calibration_batch_chunks"]
    return "\n\n".join(
        [
            f"**Verdict at the `{result['profile']}` profile ({result['backbone']['name']}, "
            f"{len(params['candidate_seeds'])} training seeds, {params['calibration_steps']} calibration steps of "
            f"{positions} positions): {result['verdict']}** (every sub-claim of every setting, combined; a setting "
            "that fails its regime gate counts as not testable).",
            *(setting_sentence(result, setting) for setting in result["settings"]),
            "Intervals over seeds are Student-t with few degrees of freedom. Where a sub-claim's claimed direction is "
            "not shown, the verdict is 'not reproduced': the data do not show what the release says, though they may "
            "not show the opposite either. The budget is a small fraction of the release's 16,000 steps: the "
            "comparison is of objectives at this budget.",
        ]
    )


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the book's summary table: per setting, the release's figures beside ours, each with its row
    verdict (stored in the result) and the setting's gate as the reason."""
    rows = []
    for setting in result["settings"]:
        view = setting_view(result, setting)
        gate = view["gate"]
        why = (
            f"module {ppl_change(gate['module_ppl_reduction'])}, bare backbone "
            f"{bare_verb(gate['bare_backbone_nib'])} the NIB ({'testable' if gate['testable'] else 'not testable'})"
        )
        for sub, record in view["sub_claims"].items():
            published = {
                "corr_mse_passes": "PASS",
                "kl_lower_corr_mse": f"{result['published']['kl_corr_mse_reduction']:.1%}",
                "kl_lower_top5": f"{result['published']['kl_top5_drop']:.3f}",
                "weighted_hurts": str(result["published"]["weighted_corr_mse"]),
                "logit_mse_far_worse": f"top-5 about {result['published']['logit_mse_top5']}",
            }[sub]
            rows.append(
                {
                    "claim": CLAIM_LABEL,
                    "figure": f"{SUB_CLAIM_LABELS[sub]}, {setting_label(result, setting)}",
                    "published": published,
                    "ours": _sub_claim_value(result, record),
                    "verdict": view["row_verdict"][sub],
                    "why": why,
                }
            )
    return rows
