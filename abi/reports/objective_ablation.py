"""Tables and verdict text of claim 3 (objective ablation), from its result file only."""

from __future__ import annotations

from typing import Any

import pandas as pd

_LABELS = {
    "corr_mse": "corrMSE",
    "kl_logits": "KL on logits",
    "logit_mse": "logit-MSE",
    "weighted_corr_mse": "position-weighted corrMSE",
    "curriculum_corr_mse": "curriculum corrMSE",
    "cosine_corr": "cosine on corrections",
    "final_hidden_mse": "final-hidden-state MSE",
    "uncalibrated": "uncalibrated candidate (floor)",
    "no_module": "bare backbone (floor)",
}
_METRIC = {"top5": "top-5", "top1": "top-1", "js": "JS", "entropy_diff": "entropy diff", "ppl": "perplexity",
           "kl_ac": "held-out KL", "corr_mse": "held-out corrMSE"}


def label(name: str) -> str:
    """Reader-facing name of an objective or floor."""
    return _LABELS.get(name, name)


def _ci(stats: dict[str, Any], digits: int = 4) -> str:
    low, high = stats["low"], stats["high"]
    if low is None or high is None:
        return f"{stats['estimate']:.{digits}f}"
    return f"{stats['estimate']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _pct(stats: dict[str, Any]) -> str:
    low, high = stats["low"], stats["high"]
    if low is None or high is None:
        return f"{stats['estimate']:.1%}"
    return f"{stats['estimate']:.1%} [{low:.1%}, {high:.1%}]"


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.2f}"


def _g(value: float) -> str:
    return f"{value:.3g}"


def objectives_table(result: dict[str, Any]) -> pd.DataFrame:
    """The objectives of this run: what each computes, its hyper-parameters, whether it needs the head."""
    rows = [{"objective": label(name), "registry name": name, "loss": o["description"],
             "hyper-parameters": ", ".join(f"{k}={v:g}" for k, v in o["hyper"].items()) or "none",
             "needs the frozen head": "yes" if o["needs_head"] else "no",
             "note": f"equals {label(o['equivalent_to'])}" if o["equivalent_to"] else ""}
            for name, o in result["objectives"].items()]
    return pd.DataFrame(rows).set_index("objective")


_ORDER = ("top5", "top1", "js", "entropy_diff")


def sweep_table(result: dict[str, Any]) -> pd.DataFrame:
    """Validation top-5 of every swept LR per objective (* = chosen), LRs added past an edge optimum, and
    whether the chosen LR is still the lowest or highest one tried."""
    p = result["parameters"]
    lrs = sorted({e["lr"] for s in result["sweep_selection"].values() for e in s["grid"]})
    rows = []
    for name, selection in result["sweep_selection"].items():
        row: dict[str, Any] = {"objective": label(name)}
        by_lr = {e["lr"]: e for e in selection["grid"]}
        for lr in lrs:
            entry = by_lr.get(lr)
            mark = " *" if lr == selection["best_lr"] else ""
            row[f"LR {lr:g}"] = f"{entry['validation_top5']:.4f}{mark}" if entry else ""
        initial = set(p["lr_grid_overrides"].get(name, p["lr_grid"]))
        row["added past an edge"] = ", ".join(f"{lr:g}" for lr in sorted(set(by_lr) - initial)) or "none"
        row["still at an edge"] = selection["best_at_grid_edge"] or "no"
        rows.append(row)
    return pd.DataFrame(rows).set_index("objective").fillna("")


def objective_table(result: dict[str, Any]) -> pd.DataFrame:
    """Held-out results per objective: mean over training seeds [95 % seed interval]."""
    groups, selection, cost = result["groups"], result["sweep_selection"], result["cost"]
    n_seeds = len(result["parameters"]["candidate_seeds"])
    rows = []
    for name, stats in groups.items():
        row: dict[str, Any] = {"objective": label(name)}
        row["LR"] = f"{selection[name]['best_lr']:g}" if name in selection else ""
        for metric in (*_ORDER, "ppl"):
            row[_METRIC[metric]] = _ci(stats[metric], 3 if metric == "ppl" else 4)
        row["final training loss"] = _ci(stats["final_loss"], 4) if "final_loss" in stats else ""
        row["held-out KL"] = _g(stats["kl_ac"]["estimate"])
        row["held-out corrMSE"] = _g(stats["corr_mse"]["estimate"])
        row["NIB PASS"] = f"{stats['n_pass']} of {n_seeds}"
        row["s / step"] = f"{cost[name]['median_s_per_step']:.3f}" if name in cost else ""
        rows.append(row)
    bare = result["comparisons"]["no_module"]["summary"]
    rows.append({"objective": label("no_module"), **{_METRIC[m]: f"{bare[m]:.4f}" for m in _ORDER},
                 "perplexity": f"{bare['ppl']:.3f}", "held-out KL": _g(bare["kl_ac"]),
                 "held-out corrMSE": _g(bare["corr_mse"]), "NIB PASS": result["comparisons"]["no_module"]["verdict"]})
    rows.append({"objective": "anchor itself", "perplexity": f"{result['anchor_ppl']['held_out']:.3f}"})
    return pd.DataFrame(rows).set_index("objective").fillna("")


def contrast_table(result: dict[str, Any]) -> pd.DataFrame:
    """corrMSE minus each other objective in held-out top-5: over seeds, and per seed (windows paired)."""
    rows = []
    for name, contrast in result["contrasts"].items():
        row: dict[str, Any] = {"objective": label(name), "corrMSE − it (seeds)": _ci(contrast["over_seeds"])}
        for seed, ci in contrast["per_seed"].items():
            row[f"seed {seed} (windows)"] = _ci(ci)
        reversals = [ci["five_window_reversal"] for ci in contrast["per_seed"].values()
                     if ci["five_window_reversal"] is not None]
        row["5-window sign flips"] = f"{sum(reversals) / len(reversals):.0%}" if reversals else ""
        row["reading"] = {"a_higher": "corrMSE higher", "b_higher": "it is higher"}.get(contrast["direction"],
                                                                                           "not separable")
        rows.append(row)
    return pd.DataFrame(rows).set_index("objective")


def cost_table(result: dict[str, Any]) -> pd.DataFrame:
    """What a calibration step costs per objective, and whether the backbone was handed to it at all."""
    rows = [{"objective": label(name), "wall s / step (median)": round(c["median_s_per_step"], 4),
             "CPU s / step (median)": round(c["median_cpu_s_per_step"], 4),
             "backbone passed to calibrate": "yes (frozen head)" if c["backbone_passed"] else "no (cached features)"}
            for name, c in result["cost"].items()]
    return pd.DataFrame(rows).set_index("objective")


def kl_statement_text(result: dict[str, Any]) -> str:
    """Seed statement 1 with our numbers."""
    kl = result["statements"]["kl"]
    if kl["status"] != "run":
        return "KL on logits was not among the objectives of this run; the seed's first statement is not tested."
    reduction, drop, held = kl["training_loss_reduction"], kl["top5_drop"]["over_seeds"], kl["held_out_kl_difference"]
    published = result["published"]
    return (
        f"**Raw KL (temperature {kl['temperature']:g}) against corrMSE: {kl['verdict']}.** "
        f"Final training loss of KL relative to corrMSE's: {_pct(reduction)} lower (mean over seeds, 95 % seed "
        f"interval; the seed: {published['kl_training_loss_reduction']:.1%}); the two losses are in different units "
        f"(nats vs squared hidden units), so this ratio only says what the seed's figure says. "
        f"Held-out top-5, corrMSE minus KL: {_ci(drop)} (the seed: {published['kl_top5_drop']:.3f} in favour of "
        f"corrMSE). In common units, the KL-trained candidates' held-out KL to the anchor minus the corrMSE-trained "
        f"ones': {_ci(held['over_seeds'], 5)}: {_COMMON[held['direction']]}"
    )


_COMMON = {
    "a_higher": "training on KL did not even reach a lower held-out KL than training on corrMSE, so the seed's "
                "'lower loss' is a comparison of numbers in different units, not a better fit.",
    "b_higher": "KL training does reach a lower held-out KL, so here lower loss goes with lower top-5 agreement.",
    "not_separable": "the two reach held-out KLs that these seeds cannot tell apart.",
}


def best_statement_text(result: dict[str, Any]) -> str:
    """Seed statement 2 with our numbers."""
    best = result["statements"]["corr_mse_best"]
    groups = result["groups"]
    parts = [f"{label(n)} {_ci(result['contrasts'][n]['over_seeds'])}" for n in best["rivals"]]
    duplicates = [n for n in result["contrasts"] if n not in best["rivals"]]
    text = (
        f"**corrMSE is the best objective: {best['verdict']}.** corrMSE reaches held-out top-5 "
        f"{_ci(groups['corr_mse']['top5'])}; the highest mean belongs to {label(best['highest_mean_top5'])}. "
        f"corrMSE minus each rival in top-5 (mean over seeds, 95 % seed interval): {'; '.join(parts)}. "
        f"Significantly worse than corrMSE: {', '.join(map(label, best['significantly_worse'])) or 'none'}; "
        f"significantly better: {', '.join(map(label, best['significantly_better'])) or 'none'}; "
        f"not separable with these seeds: {', '.join(map(label, best['not_separable'])) or 'none'}."
    )
    for name in duplicates:
        text += (f" {label(name)} is corrMSE written another way (the shared final hidden state cancels); its "
                 f"difference to corrMSE is {_ci(result['contrasts'][name]['over_seeds'], 5)}, not counted as a rival.")
    return text


def verdict_paragraph(result: dict[str, Any]) -> str:
    """The chapter's closing paragraph: both statements, the seed's other figures, and the caveats."""
    groups, p = result["groups"], result["parameters"]
    extra = []
    if "logit_mse" in groups:
        extra.append(f"logit-MSE reaches top-5 {_ci(groups['logit_mse']['top5'])} (the seed: about "
                     f"{result['published']['logit_mse_top5']})")
    if "weighted_corr_mse" in result["contrasts"]:
        extra.append("position-weighted corrMSE trails corrMSE by "
                     f"{_ci(result['contrasts']['weighted_corr_mse']['over_seeds'])} (the seed: it hurt)")
    bare = result["comparisons"]["no_module"]
    if bare["verdict"] == "PASS":
        extra.append(f"the bare backbone already passes NIB against this anchor (top-5 {bare['summary']['top5']:.4f}): "
                     "the anchor's corrections are small, and the objectives are compared in that regime")
    edges = [label(n) for n, s in result["sweep_selection"].items() if s["best_at_grid_edge"]]
    if edges:
        extra.append(f"the best LR of {', '.join(edges)} is still at the edge of the LRs tried, so it may be "
                     "better still at another LR")
    rank = result["loss_vs_agreement"]
    if rank["spearman_top5_vs_kl_ac"] is not None:
        extra.append(f"over all {rank['n_runs']} runs, held-out top-5 and held-out KL to the anchor have Spearman "
                     f"rank correlation {rank['spearman_top5_vs_kl_ac']:.2f}, top-5 and held-out corrMSE "
                     f"{_fmt(rank['spearman_top5_vs_corr_mse'])} (negative: lower loss, higher agreement)")
    positions = p["chunk_len"] * p["calibration_batch_chunks"]
    return "\n\n".join([
        f"**Verdict at the `{result['profile']}` profile ({result['backbone']['name']}, "
        f"{len(p['candidate_seeds'])} training seeds, {p['calibration_steps']} calibration steps of {positions} "
        f"positions, each objective at its own validation-best LR).**",
        kl_statement_text(result),
        best_statement_text(result),
        ("Other figures: " + "; ".join(extra) + ".") if extra else "",
        "Intervals over seeds are Student-t with few degrees of freedom, so 'not separable' often means 'too few "
        "seeds to tell', not 'equal'. The budget is a small fraction of the seed's 16,000 steps: the ranking is of "
        "objectives at this budget.",
    ]).strip()


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the book's summary table: the seed's ablation statements beside ours."""
    statements, groups, published = result["statements"], result["groups"], result["published"]
    kl = statements["kl"]
    best = statements["corr_mse_best"]
    reproduced = kl.get("verdict") == "confirmed" and best.get("verdict") == "confirmed"
    verdict = "reproduced" if reproduced else "not reproduced"
    why = (f"KL statement: {kl.get('verdict')}; 'corrMSE is best': {best.get('verdict')} "
           f"(significantly worse: {', '.join(best['significantly_worse']) or 'none'}; not separable: "
           f"{', '.join(best['not_separable']) or 'none'}); logit-MSE reaches top-5 "
           f"{groups['logit_mse']['top5']['estimate']:.3f}, not about {published['logit_mse_top5']}")
    rows = []
    if kl.get("status") == "run":
        drop = kl["top5_drop"]["over_seeds"]
        loss = kl["training_loss_reduction"]
        rows += [
            {"figure": "KL: lower training loss than corrMSE (relative)",
             "published": f"{published['kl_training_loss_reduction']:.1%}",
             "ours": f"{loss['estimate']:.1%} [{loss['low']:.1%}, {loss['high']:.1%}] (different units)"},
            {"figure": "KL: top-5 lower than corrMSE by", "published": f"{published['kl_top5_drop']:.3f}",
             "ours": f"{drop['estimate']:.4f} [{drop['low']:.4f}, {drop['high']:.4f}]"},
        ]
    logit = groups["logit_mse"]["top5"]
    rows += [
        {"figure": "logit-MSE: held-out top-5", "published": f"about {published['logit_mse_top5']}",
         "ours": f"{logit['estimate']:.4f} [{logit['low']:.4f}, {logit['high']:.4f}]"},
        {"figure": "corrMSE is the best objective", "published": "yes",
         "ours": f"{best['verdict']} (highest mean top-5: {label(best['highest_mean_top5'])})"},
        {"figure": "weighted corrMSE", "published": str(published["weighted_corr_mse"]),
         "ours": _ci(groups["weighted_corr_mse"]["top5"]) + " top-5 vs corrMSE " + _ci(groups["corr_mse"]["top5"])},
    ]
    return [{"claim": "3. objective ablation", **row, "verdict": verdict, "why": why} for row in rows]
