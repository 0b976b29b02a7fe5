"""Derived sections, verdict and glued numbers of claim 3's result file, from its stored raw values only.

The notebook's writer and the verifier both call :func:`derive`, so a stored summary, interval,
LR choice or verdict that does not follow from the raw per-window values, sweep records and
per-step training losses fails verification. The chapter, its glued numbers and the summary all
take the claim's verdict from :func:`claim_verdict`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from abi.stats import paired_difference_ci, seed_interval

# What the release published for claim 3.
PUBLISHED = {
    "setting": "T5-large, claim-1 anchor and candidate, seven calibration objectives, one run each, "
    "judged on one set of five windows",
    "kl_training_loss_reduction": 0.127,
    "kl_top5_drop": 0.030,
    "logit_mse_top5": 0.6,
    "weighted_corr_mse": "hurt (no figure given)",
}
GROUP_METRICS = ("top5", "top1", "js", "entropy_diff", "ppl", "kl_ac", "corr_mse")
# Reader-facing names of the objectives and floors, and of the held-out losses only this claim scores.
OBJECTIVE_LABELS = {
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
LOSS_LABELS = {"kl_ac": "held-out KL", "corr_mse": "held-out corrMSE"}


def objective_label(name: str) -> str:
    """Reader-facing name of an objective or floor (the registry name when it has none)."""
    return OBJECTIVE_LABELS.get(name, name)


def best_rolling_loss(losses: list[float], window: int) -> float:
    """The loss of the checkpoint calibrate restores: the best ``window``-step rolling mean."""
    if len(losses) <= window:
        return sum(losses) / len(losses)
    return min(sum(losses[s - window + 1 : s + 1]) / window for s in range(window - 1, len(losses)))


def _position_weighted_mean(values: list[float], n_positions: list[float]) -> float:
    return float(np.average(np.asarray(values, float), weights=np.asarray(n_positions, float)))


def select_lr(records: list[dict[str, Any]], rolling_window: int) -> dict[str, Any]:
    """Best LR of one objective: highest validation top-5 (ties: the lower LR); whether it is the lowest or
    highest LR tried (an edge optimum: the sweep may not contain the objective's best LR)."""
    table = sorted(
        (
            {
                "lr": r["lr"],
                "validation_top5": _position_weighted_mean(r["validation"]["top5"], r["validation"]["n_positions"]),
                "validation_js": _position_weighted_mean(r["validation"]["js"], r["validation"]["n_positions"]),
                "final_loss": best_rolling_loss(r["losses"], rolling_window),
            }
            for r in records
        ),
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


def _interval_over_seeds(values: list[float]) -> dict[str, Any]:
    """Student-t interval of the mean over training seeds, with the per-seed values it comes from."""
    return {**seed_interval(values).to_dict(), "per_seed": values}


def _groups(result: dict[str, Any]) -> dict[str, Any]:
    params, comparisons, runs = result["parameters"], result["comparisons"], result["training"]["runs"]
    seeds = [str(s) for s in params["candidate_seeds"]]
    out = {}
    for group in [*params["objectives"], "uncalibrated"]:
        stats = {
            metric: _interval_over_seeds([comparisons[f"{group}/{s}"]["summary"][metric] for s in seeds])
            for metric in GROUP_METRICS
        }
        stats["n_pass"] = sum(comparisons[f"{group}/{s}"]["verdict"] == "PASS" for s in seeds)
        if group != "uncalibrated":
            stats["final_loss"] = _interval_over_seeds(
                [best_rolling_loss(runs[f"{group}/{s}"]["losses"], params["rolling_window"]) for s in seeds]
            )
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
    params, comparisons = result["parameters"], result["comparisons"]
    bootstrap = params["bootstrap"]
    per_seed, differences = {}, []
    for seed in (str(s) for s in params["candidate_seeds"]):
        windows_a, windows_b = comparisons[f"{a}/{seed}"]["per_window"], comparisons[f"{b}/{seed}"]["per_window"]
        difference = paired_difference_ci(
            windows_a[metric],
            windows_b[metric],
            windows_a["n_positions"],
            n_resamples=bootstrap["n_resamples"],
            seed=bootstrap["seed"],
        )
        per_window = np.asarray(windows_a[metric], float) - np.asarray(windows_b[metric], float)
        per_seed[seed] = {
            **difference.to_dict(),
            "five_window_reversal": _five_window_reversal(
                per_window, np.asarray(windows_a["n_positions"], float), bootstrap["seed"]
            ),
        }
        differences.append(difference.estimate)
    over = seed_interval(differences).to_dict()
    sign = "a_higher" if over["low"] > 0 else "b_higher" if over["high"] < 0 else "not_separable"
    return {"a": a, "b": b, "metric": metric, "over_seeds": over, "per_seed": per_seed, "direction": sign}


def _kl_statement(result: dict[str, Any], groups: dict[str, Any]) -> dict[str, Any]:
    """The release's statement 1: raw KL reaches lower training loss than corrMSE, yet lower top-5."""
    if "kl_logits" not in result["parameters"]["objectives"]:
        return {"status": "not run"}
    loss_kl, loss_corr = groups["kl_logits"]["final_loss"]["per_seed"], groups["corr_mse"]["final_loss"]["per_seed"]
    reduction = seed_interval([1 - k / c for k, c in zip(loss_kl, loss_corr)]).to_dict()
    top5 = _contrast(result, "corr_mse", "kl_logits")
    held_kl = _contrast(result, "kl_logits", "corr_mse", "kl_ac")
    lower_loss = "yes" if reduction["low"] > 0 else "no" if reduction["high"] < 0 else "not_separable"
    lower_top5 = {"a_higher": "yes", "b_higher": "no"}.get(top5["direction"], "not_separable")
    verdict = (
        "confirmed"
        if lower_loss == lower_top5 == "yes"
        else "refuted"
        if "no" in (lower_loss, lower_top5)
        else "inconclusive"
    )
    return {
        "status": "run",
        "training_loss_reduction": reduction,
        "kl_has_lower_training_loss": lower_loss,
        "top5_drop": top5,
        "kl_has_lower_top5": lower_top5,
        "held_out_kl_difference": held_kl,
        "temperature": result["objectives"]["kl_logits"]["hyper"]["temperature"],
        "verdict": verdict,
    }


def _best_statement(result: dict[str, Any], groups: dict[str, Any], contrasts: dict[str, Any]) -> dict[str, Any]:
    """The release's statement 2: corrMSE is the best objective (duplicates of corrMSE are not competitors)."""
    rivals = [n for n in contrasts if result["objectives"][n]["equivalent_to"] != "corr_mse"]
    means = {n: groups[n]["top5"]["estimate"] for n in ["corr_mse", *contrasts]}
    better = [n for n in rivals if contrasts[n]["direction"] == "b_higher"]
    worse = [n for n in rivals if contrasts[n]["direction"] == "a_higher"]
    verdict = "refuted" if better else "confirmed" if len(worse) == len(rivals) else "inconclusive"
    return {
        "rivals": rivals,
        "significantly_worse": worse,
        "significantly_better": better,
        "not_separable": [n for n in rivals if n not in better + worse],
        "highest_mean_top5": max(means, key=means.get),
        "verdict": verdict,
    }


def derive(result: dict[str, Any]) -> dict[str, Any]:
    """Sections computed from the stored raw values alone; the verifier recomputes them the same way."""
    params = result["parameters"]
    groups = _groups(result)
    contrasts = {n: _contrast(result, "corr_mse", n) for n in params["objectives"] if n != "corr_mse"}
    floors = {n: _contrast(result, n, "uncalibrated") for n in params["objectives"]}
    return {
        "sweep_selection": {n: select_lr(records, params["rolling_window"]) for n, records in result["sweep"].items()},
        "groups": groups,
        "contrasts": contrasts,
        "vs_uncalibrated": floors,
        "statements": {
            "kl": _kl_statement(result, groups),
            "corr_mse_best": _best_statement(result, groups, contrasts),
        },
        "cost": _cost(result),
        "loss_vs_agreement": _loss_vs_agreement(result),
    }


def _loss_vs_agreement(result: dict[str, Any]) -> dict[str, Any]:
    """Spearman rank correlation of held-out top-5 with held-out losses in common units, over every run."""
    params, comparisons = result["parameters"], result["comparisons"]
    runs = [f"{n}/{s}" for n in params["objectives"] for s in params["candidate_seeds"]]
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
        name: {
            "median_s_per_step": float(
                np.median([r["s_per_step"] for k, r in runs.items() if k.split("/")[0] == name])
            ),
            "median_cpu_s_per_step": float(
                np.median([r["cpu_s"] / len(r["losses"]) for k, r in runs.items() if k.split("/")[0] == name])
            ),
            "backbone_passed": any(r["backbone_passed"] for k, r in runs.items() if k.split("/")[0] == name),
        }
        for name in result["parameters"]["objectives"]
    }


def claim_verdict(result: dict[str, Any]) -> str:
    """reproduced only when both of the release's statements are confirmed (KL: lower loss yet lower top-5;
    corrMSE significantly better than every rival)."""
    statements = result["statements"]
    confirmed = statements["kl"].get("verdict") == "confirmed" and statements["corr_mse_best"]["verdict"] == "confirmed"
    return "reproduced" if confirmed else "not reproduced"


def glue_values(result: dict[str, Any]) -> dict[str, Any]:
    """Numbers the book's prose pulls in with myst-nb ``glue`` (never typed by hand)."""
    groups, statements = result["groups"], result["statements"]
    values: dict[str, Any] = {
        "c3_verdict": claim_verdict(result),
        "c3_backbone": result["backbone"]["name"],
        "c3_n_seeds": len(result["parameters"]["candidate_seeds"]),
        "c3_minutes": round(result["resources"]["wall_s"] / 60, 1),
        "c3_corr_top5": groups["corr_mse"]["top5"]["estimate"],
        "c3_corr_top5_low": groups["corr_mse"]["top5"]["low"],
        "c3_corr_top5_high": groups["corr_mse"]["top5"]["high"],
        "c3_best_verdict": statements["corr_mse_best"]["verdict"],
        "c3_best_mean": statements["corr_mse_best"]["highest_mean_top5"],
    }
    kl = statements["kl"]
    if kl["status"] == "run":
        values.update(
            {
                "c3_kl_verdict": kl["verdict"],
                "c3_kl_top5": groups["kl_logits"]["top5"]["estimate"],
                "c3_kl_drop": kl["top5_drop"]["over_seeds"]["estimate"],
                "c3_kl_drop_low": kl["top5_drop"]["over_seeds"]["low"],
                "c3_kl_drop_high": kl["top5_drop"]["over_seeds"]["high"],
                "c3_kl_loss_reduction": kl["training_loss_reduction"]["estimate"],
            }
        )
    if "logit_mse" in groups:
        values["c3_logit_mse_top5"] = groups["logit_mse"]["top5"]["estimate"]
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
