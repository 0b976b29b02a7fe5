"""Derived sections of claim 3's result file, computed from its stored raw values only.

The notebook's writer and the verifier both call :func:`derive`, so a stored summary, interval,
LR choice or verdict that does not follow from the raw per-window values, sweep records and
per-step training losses fails verification.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from abi.stats import paired_difference_ci, seed_interval

GROUP_METRICS = ("top5", "top1", "js", "entropy_diff", "ppl", "kl_ac", "corr_mse")


def best_rolling_loss(losses: list[float], window: int) -> float:
    """The loss of the checkpoint calibrate restores: the best ``window``-step rolling mean."""
    if len(losses) <= window:
        return sum(losses) / len(losses)
    return min(sum(losses[s - window + 1: s + 1]) / window for s in range(window - 1, len(losses)))


def _weighted(values: list[float], n_positions: list[float]) -> float:
    return float(np.average(np.asarray(values, float), weights=np.asarray(n_positions, float)))


def select_lr(records: list[dict[str, Any]], rolling_window: int) -> dict[str, Any]:
    """Best LR of one objective: highest validation top-5 (ties: the lower LR); whether it is the lowest or
    highest LR tried (an edge optimum: the sweep may not contain the objective's best LR)."""
    table = sorted(
        ({"lr": r["lr"], "validation_top5": _weighted(r["validation"]["top5"], r["validation"]["n_positions"]),
          "validation_js": _weighted(r["validation"]["js"], r["validation"]["n_positions"]),
          "final_loss": best_rolling_loss(r["losses"], rolling_window)} for r in records),
        key=lambda row: row["lr"],
    )
    best = max(range(len(table)), key=lambda i: (table[i]["validation_top5"], -i))
    edge = "low" if best == 0 else "high" if best == len(table) - 1 else None
    return {"grid": table, "best_lr": table[best]["lr"], "best_at_grid_edge": edge if len(table) > 1 else None}


def next_lr(records: list[dict[str, Any]], rolling_window: int) -> float | None:
    """One step beyond an edge optimum, at the grid's own ratio (``None`` when the optimum is inside)."""
    selection = select_lr(records, rolling_window)
    lrs = [row["lr"] for row in selection["grid"]]
    if selection["best_at_grid_edge"] == "low":
        step = lrs[0] * lrs[0] / lrs[1]
    elif selection["best_at_grid_edge"] == "high":
        step = lrs[-1] * lrs[-1] / lrs[-2]
    else:
        return None
    step = float(f"{step:.3g}")
    return step if 0 < step < 1 else None


def _seed_ci(values: list[float]) -> dict[str, Any]:
    return {**seed_interval(values).to_dict(), "per_seed": values}


def _groups(result: dict[str, Any]) -> dict[str, Any]:
    p, comparisons, runs = result["parameters"], result["comparisons"], result["training"]["runs"]
    seeds = [str(s) for s in p["candidate_seeds"]]
    out = {}
    for group in [*p["objectives"], "uncalibrated"]:
        stats = {m: _seed_ci([comparisons[f"{group}/{s}"]["summary"][m] for s in seeds]) for m in GROUP_METRICS}
        stats["n_pass"] = sum(comparisons[f"{group}/{s}"]["verdict"] == "PASS" for s in seeds)
        if group != "uncalibrated":
            stats["final_loss"] = _seed_ci([best_rolling_loss(runs[f"{group}/{s}"]["losses"], p["rolling_window"])
                                            for s in seeds])
        out[group] = stats
    return out


def _five_window_reversal(diff: np.ndarray, weights: np.ndarray, seed: int, draws: int = 2000) -> float | None:
    """How often a five-window judgement (the original's) gets the sign of a difference wrong."""
    if len(diff) <= 5:
        return None
    full = np.sign(np.average(diff, weights=weights))
    picks = np.argsort(np.random.default_rng(seed).random((draws, len(diff))), axis=1)[:, :5]
    means = (diff[picks] * weights[picks]).sum(1) / weights[picks].sum(1)
    return float(np.mean(np.sign(means) != full))


def _contrast(result: dict[str, Any], a: str, b: str, metric: str = "top5") -> dict[str, Any]:
    """``a - b`` on a held-out metric: per seed (windows paired), and over seeds (seeds paired)."""
    p, comparisons, boot = result["parameters"], result["comparisons"], result["parameters"]["bootstrap"]
    per_seed, diffs = {}, []
    for s in (str(x) for x in p["candidate_seeds"]):
        wa, wb = comparisons[f"{a}/{s}"]["per_window"], comparisons[f"{b}/{s}"]["per_window"]
        ci = paired_difference_ci(wa[metric], wb[metric], wa["n_positions"], n_resamples=boot["n_resamples"],
                                  seed=boot["seed"])
        diff = np.asarray(wa[metric], float) - np.asarray(wb[metric], float)
        per_seed[s] = {**ci.to_dict(), "five_window_reversal": _five_window_reversal(
            diff, np.asarray(wa["n_positions"], float), boot["seed"])}
        diffs.append(ci.estimate)
    over = seed_interval(diffs).to_dict()
    sign = "a_higher" if over["low"] > 0 else "b_higher" if over["high"] < 0 else "not_separable"
    return {"a": a, "b": b, "metric": metric, "over_seeds": over, "per_seed": per_seed, "direction": sign}


def _kl_statement(result: dict[str, Any], groups: dict[str, Any]) -> dict[str, Any]:
    """Seed statement 1: raw KL reaches lower training loss than corrMSE, yet lower top-5."""
    p = result["parameters"]
    if "kl_logits" not in p["objectives"]:
        return {"status": "not run"}
    loss_kl, loss_corr = groups["kl_logits"]["final_loss"]["per_seed"], groups["corr_mse"]["final_loss"]["per_seed"]
    reduction = seed_interval([1 - k / c for k, c in zip(loss_kl, loss_corr)]).to_dict()
    top5 = _contrast(result, "corr_mse", "kl_logits")
    held_kl = _contrast(result, "kl_logits", "corr_mse", "kl_ac")
    lower_loss = "yes" if reduction["low"] > 0 else "no" if reduction["high"] < 0 else "not_separable"
    lower_top5 = {"a_higher": "yes", "b_higher": "no"}.get(top5["direction"], "not_separable")
    verdict = ("confirmed" if lower_loss == lower_top5 == "yes" else
               "refuted" if "no" in (lower_loss, lower_top5) else "inconclusive")
    return {"status": "run", "training_loss_reduction": reduction, "kl_has_lower_training_loss": lower_loss,
            "top5_drop": top5, "kl_has_lower_top5": lower_top5, "held_out_kl_difference": held_kl,
            "temperature": result["objectives"]["kl_logits"]["hyper"]["temperature"], "verdict": verdict}


def _best_statement(result: dict[str, Any], groups: dict[str, Any], contrasts: dict[str, Any]) -> dict[str, Any]:
    """Seed statement 2: corrMSE is the best objective (duplicates of corrMSE are not competitors)."""
    rivals = [n for n in contrasts if result["objectives"][n]["equivalent_to"] != "corr_mse"]
    means = {n: groups[n]["top5"]["estimate"] for n in ["corr_mse", *contrasts]}
    better = [n for n in rivals if contrasts[n]["direction"] == "b_higher"]
    worse = [n for n in rivals if contrasts[n]["direction"] == "a_higher"]
    verdict = "refuted" if better else "confirmed" if len(worse) == len(rivals) else "inconclusive"
    return {"rivals": rivals, "significantly_worse": worse, "significantly_better": better,
            "not_separable": [n for n in rivals if n not in better + worse],
            "highest_mean_top5": max(means, key=means.get), "verdict": verdict}


def derive(result: dict[str, Any]) -> dict[str, Any]:
    """Sections computed from the stored raw values alone; the verifier recomputes them the same way."""
    p = result["parameters"]
    groups = _groups(result)
    contrasts = {n: _contrast(result, "corr_mse", n) for n in p["objectives"] if n != "corr_mse"}
    floors = {n: _contrast(result, n, "uncalibrated") for n in p["objectives"]}
    return {
        "sweep_selection": {n: select_lr(records, p["rolling_window"]) for n, records in result["sweep"].items()},
        "groups": groups,
        "contrasts": contrasts,
        "vs_uncalibrated": floors,
        "statements": {"kl": _kl_statement(result, groups),
                       "corr_mse_best": _best_statement(result, groups, contrasts)},
        "cost": _cost(result),
        "loss_vs_agreement": _loss_vs_agreement(result),
    }


def _loss_vs_agreement(result: dict[str, Any]) -> dict[str, Any]:
    """Spearman rank correlation of held-out top-5 with held-out losses in common units, over every run."""
    p, comparisons = result["parameters"], result["comparisons"]
    runs = [f"{n}/{s}" for n in p["objectives"] for s in p["candidate_seeds"]]
    top5 = [comparisons[r]["summary"]["top5"] for r in runs]
    out = {"n_runs": len(runs)}
    for metric in ("kl_ac", "corr_mse"):
        values = [comparisons[r]["summary"][metric] for r in runs]
        rho = scipy_stats.spearmanr(values, top5).statistic if len(set(values)) > 1 and len(set(top5)) > 1 else None
        out[f"spearman_top5_vs_{metric}"] = None if rho is None or not math.isfinite(rho) else float(rho)
    return out


def _cost(result: dict[str, Any]) -> dict[str, Any]:
    """Seconds per calibration step of each objective (median over its runs), and whether it used the backbone."""
    runs = result["training"]["runs"]
    return {
        name: {"median_s_per_step": float(np.median([r["s_per_step"] for k, r in runs.items()
                                                     if k.split("/")[0] == name])),
               "median_cpu_s_per_step": float(np.median([r["cpu_s"] / len(r["losses"]) for k, r in runs.items()
                                                         if k.split("/")[0] == name])),
               "backbone_passed": any(r["backbone_passed"] for k, r in runs.items() if k.split("/")[0] == name)}
        for name in result["parameters"]["objectives"]
    }
