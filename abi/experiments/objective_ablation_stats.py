"""Derived sections, regime gates, row verdicts and glued numbers of claim 3's result file, from its stored raw
values only.

The notebook's writer and the verifier both call :func:`derive`, so a stored summary, interval, LR choice,
gate or verdict that does not follow from the raw per-window values, sweep records and per-step training
losses fails verification. Chapters and the summary only read the stored ``verdict`` and ``row_verdicts``.

Pre-registered rules (fixed before any ``cpu`` run of this schema)
------------------------------------------------------------------
Every setting (claim 1's ``python`` and ``python-dialect``) carries claim 1's regime gate
(:func:`abi.verdicts.regime_gate`: the anchor lowers held-out perplexity by >= 25 % and the bare backbone
fails the held-out NIB against the anchor); every row verdict below goes through
:func:`abi.verdicts.gated`, so an untestable setting's rows are "not testable in this regime".

``row_verdicts`` is ``{setting: {sub_claim: verdict}}``; a sub-claim whose objectives did not run is absent.
The claim's ``verdict`` is :func:`abi.verdicts.combine` over every row of every setting (not-testable rows
drop out; rows that disagree give "mixed").

a. ``corr_mse_passes`` — corrMSE calibration passes the held-out NIB and beats every floor:
   :func:`abi.verdicts.nib_row_verdict` over the training seeds, where a seed beats every floor when the
   one-sided 95 % window-paired bootstrap bound of its top-5 minus the floor's is above 0 for the bare
   backbone, its own uncalibrated candidate and the random module through identical calibration.
b. ``kl_lower_corr_mse`` — "raw KL reaches 12.7 % lower corrMSE": per seed, r = 1 - corrMSE(KL-trained) /
   corrMSE(corrMSE-trained), both held-out corrMSE to the anchor (same units, same windows); the Student-t
   95 % interval of r over seeds (seeds paired).
c. ``kl_lower_top5`` — "raw KL has 0.030 lower top-5": per seed, top-5(corrMSE) - top-5(raw KL) on the same
   held-out windows; Student-t 95 % interval over seeds.
d. ``weighted_hurts`` — "weighted corrMSE hurts": top-5(corrMSE) - top-5(the ledger's weighted corrMSE), as c.
e. ``logit_mse_far_worse`` — "logit-MSE is catastrophic" (unsourced): top-5(corrMSE) - top-5(logit-MSE), as
   c, against a pre-registered margin of :data:`FAR_WORSE_MARGIN` (0.10 top-5) instead of 0.

For b-e the interval's *direction* is "claimed" (excludes 0, or the margin, on the release's side),
"opposite" (excludes 0 on the other side) or "not shown". The vocabulary has no "inconclusive": we map
"claimed" to "reproduced" and both other directions to "not reproduced" (the claimed direction is not shown),
and store the direction beside the verdict so the chapter says which.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from abi.experiments.core_nib_stats import setting_view  # claim 3's result has claim 1's layout
from abi.results import perplexity_from
from abi.stats import paired_difference_ci, seed_interval
from abi.verdicts import NOT_REPRODUCED, REPRODUCED, combine, gated, nib_row_verdict, regime_gate

SCHEMA_VERSION = 2  # 2: settings with regime gates, the ledger's objectives, floors and ceiling, row verdicts

# What the release published for claim 3.
PUBLISHED = {
    "setting": "T5-large, claim-1 anchor and candidate, seven calibration objectives, one run each, "
    "judged on one set of five windows",
    "kl_corr_mse_reduction": 0.127,
    "kl_top5_drop": 0.030,
    "logit_mse_top5": 0.6,
    "weighted_corr_mse": "hurt (no figure given)",
}
# Pre-registered: logit-MSE is "far worse" when its top-5 trails corrMSE's by more than this (interval-wise).
FAR_WORSE_MARGIN = 0.10
FLOORS = ("no_module", "uncalibrated", "random_calibrated")
SEEDED_FLOORS = ("uncalibrated", "random_calibrated")
GROUP_METRICS = ("top5", "top1", "js", "entropy_diff", "ppl", "kl_ac", "corr_mse")
# Sub-claims b-e: (objective compared with corrMSE, metric, margin).
SUB_CLAIMS = {
    "kl_lower_corr_mse": ("kl_raw", "corr_mse_reduction", 0.0),
    "kl_lower_top5": ("kl_raw", "top5", 0.0),
    "weighted_hurts": ("weighted_corr_mse", "top5", 0.0),
    "logit_mse_far_worse": ("logit_mse", "top5", FAR_WORSE_MARGIN),
}
SUB_CLAIM_LABELS = {
    "corr_mse_passes": "a. corrMSE calibration passes the held-out NIB and beats every floor",
    "kl_lower_corr_mse": "b. raw KL reaches lower held-out corrMSE than corrMSE training (12.7 %)",
    "kl_lower_top5": "c. raw KL has lower top-5 than corrMSE (0.030)",
    "weighted_hurts": "d. the ledger's weighted corrMSE has lower top-5 than corrMSE",
    "logit_mse_far_worse": f"e. logit-MSE's top-5 trails corrMSE's by more than {FAR_WORSE_MARGIN} (unsourced)",
}
# Reader-facing names of the objectives and floors, and of the held-out losses only this claim scores.
OBJECTIVE_LABELS = {
    "corr_mse": "corrMSE",
    "kl_raw": "raw KL (T = 2, no T², LR / 10)",
    "weighted_corr_mse": "weighted corrMSE (ledger)",
    "curriculum": "curriculum (ledger)",
    "logit_mse": "logit-MSE",
    "kl_logits": "KL with T² (ours)",
    "norm_weighted_corr_mse": "hidden-norm-weighted corrMSE (ours)",
    "curriculum_corr_mse": "small-first curriculum (ours)",
    "cosine_corr": "cosine on corrections (ours)",
    "final_hidden_mse": "final-hidden-state MSE (= corrMSE)",
    "uncalibrated": "uncalibrated candidate (floor)",
    "random_calibrated": "random module + corrMSE calibration (floor)",
    "no_module": "bare backbone (floor)",
    "ceiling": "second anchor (seed ceiling)",
}
LOSS_LABELS = {"kl_ac": "held-out KL", "corr_mse": "held-out corrMSE"}


def objective_label(name: str) -> str:
    """Reader-facing name of an objective or arm (the registry name when it has none)."""
    return OBJECTIVE_LABELS.get(name, name)


def best_rolling_loss(losses: list[float], window: int) -> float:
    """The loss of the checkpoint calibrate restores: the best ``window``-step rolling mean."""
    if len(losses) <= window:
        return sum(losses) / len(losses)
    return min(sum(losses[s - window + 1 : s + 1]) / window for s in range(window - 1, len(losses)))


def _position_weighted_mean(values: list[float], n_positions: list[float]) -> float:
    return float(np.average(np.asarray(values, float), weights=np.asarray(n_positions, float)))


# -- learning rates ----------------------------------------------------------------------------------
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


def _lr_selection(setting: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Every objective's LR: the sweep's choice, or (``derived_lr``) its source's choice times the factor."""
    out = {name: select_lr(records, params["rolling_window"]) for name, records in setting["sweep"].items()}
    for name, rule in params["derived_lr"].items():
        out[name] = {
            "derived_from": rule["from"],
            "factor": rule["factor"],
            "best_lr": float(f"{out[rule['from']]['best_lr'] * rule['factor']:.3g}"),
        }
    return out


# -- per-setting statistics ----------------------------------------------------------------------------
def _interval_over_seeds(values: list[float]) -> dict[str, Any]:
    """Student-t interval of the mean over training seeds, with the per-seed values it comes from."""
    return {**seed_interval(values).to_dict(), "per_seed": values}


def _groups(setting: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    comparisons, runs = setting["comparisons"], setting["training"]["runs"]
    seeds = [str(s) for s in setting["candidate_seeds"]]
    out = {}
    for group in [*params["objectives"], *SEEDED_FLOORS]:
        stats = {
            metric: _interval_over_seeds([comparisons[f"{group}/{s}"]["summary"][metric] for s in seeds])
            for metric in GROUP_METRICS
        }
        stats["n_pass"] = sum(comparisons[f"{group}/{s}"]["verdict"] == "PASS" for s in seeds)
        if group in params["objectives"]:
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


def _contrast(setting: dict[str, Any], params: dict[str, Any], a: str, b: str, metric: str = "top5") -> dict:
    """``a - b`` on a held-out metric: per seed (windows paired), and over seeds (seeds paired)."""
    comparisons, bootstrap = setting["comparisons"], params["bootstrap"]
    per_seed, differences = {}, []
    for seed in (str(s) for s in setting["candidate_seeds"]):
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


def _floors(setting: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Per seed: corrMSE-calibrated candidate minus each floor in top-5 (one-sided 95 % window-paired bound),
    and minus the seed-noise ceiling (two-sided)."""
    comparisons, bootstrap = setting["comparisons"], params["bootstrap"]
    out = {}
    for seed in (str(s) for s in setting["candidate_seeds"]):
        candidate = comparisons[f"corr_mse/{seed}"]["per_window"]
        record = {}
        for floor in (*FLOORS, "ceiling"):
            key = f"{floor}/{seed}" if floor in SEEDED_FLOORS else floor
            difference = paired_difference_ci(
                candidate["top5"],
                comparisons[key]["per_window"]["top5"],
                candidate["n_positions"],
                one_sided=floor != "ceiling",
                n_resamples=bootstrap["n_resamples"],
                seed=bootstrap["seed"],
            )
            record[f"minus_{floor}"] = difference.to_dict()
            if floor != "ceiling":
                record[f"minus_{floor}"]["beats"] = bool(difference.low > 0)
        out[seed] = record
    return out


def _direction(interval: dict[str, Any], margin: float) -> str:
    if interval["low"] is not None and interval["low"] > margin:
        return "claimed"
    if interval["high"] is not None and interval["high"] < 0:
        return "opposite"
    return "not shown"


def _sub_claim(setting: dict[str, Any], params: dict[str, Any], name: str) -> dict[str, Any] | None:
    """One of sub-claims b-e (see the module docstring), or None when its objective did not run."""
    objective, metric, margin = SUB_CLAIMS[name]
    if objective not in params["objectives"]:
        return None
    seeds = [str(s) for s in setting["candidate_seeds"]]
    summaries = {
        arm: [setting["comparisons"][f"{arm}/{s}"]["summary"] for s in seeds] for arm in ("corr_mse", objective)
    }
    if metric == "corr_mse_reduction":
        values = [1 - o["corr_mse"] / c["corr_mse"] for c, o in zip(summaries["corr_mse"], summaries[objective])]
        detail = {"held_out_corr_mse_difference": _contrast(setting, params, objective, "corr_mse", "corr_mse")}
    else:
        values = [c[metric] - o[metric] for c, o in zip(summaries["corr_mse"], summaries[objective])]
        detail = {"per_seed_windows": _contrast(setting, params, "corr_mse", objective, metric)["per_seed"]}
    interval = _interval_over_seeds(values)
    direction = _direction(interval, margin)
    return {
        "objective": objective,
        "statistic": metric if metric == "corr_mse_reduction" else f"corr_mse minus {objective} in {metric}",
        "margin": margin,
        "interval": interval,
        "direction": direction,
        "verdict": REPRODUCED if direction == "claimed" else NOT_REPRODUCED,
        **detail,
    }


def _corr_mse_passes(setting: dict[str, Any], floors: dict[str, Any]) -> dict[str, Any]:
    seeds = [str(s) for s in setting["candidate_seeds"]]
    n_pass = sum(setting["comparisons"][f"corr_mse/{s}"]["verdict"] == "PASS" for s in seeds)
    beats = all(floors[s][f"minus_{floor}"]["beats"] for s in seeds for floor in FLOORS)
    return {
        "n_pass": n_pass,
        "n_seeds": len(seeds),
        "beats_every_floor": beats,
        "verdict": nib_row_verdict(n_pass, len(seeds), beats),
    }


def _loss_vs_agreement(setting: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Spearman rank correlation of held-out top-5 with held-out losses in common units, over every run."""
    comparisons = setting["comparisons"]
    runs = [f"{n}/{s}" for n in params["objectives"] for s in setting["candidate_seeds"]]
    top5 = [comparisons[r]["summary"]["top5"] for r in runs]
    out: dict[str, Any] = {"n_runs": len(runs)}
    for metric in ("kl_ac", "corr_mse"):
        values = [comparisons[r]["summary"][metric] for r in runs]
        rho = scipy_stats.spearmanr(values, top5).statistic if len(set(values)) > 1 and len(set(top5)) > 1 else None
        out[f"spearman_top5_vs_{metric}"] = None if rho is None or not math.isfinite(rho) else float(rho)
    return out


def _cost(setting: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Seconds per calibration step of each objective (median over its runs), and whether it used the backbone."""
    runs = setting["training"]["runs"]
    out = {}
    for name in params["objectives"]:
        mine = [r for k, r in runs.items() if k.split("/")[0] == name]
        out[name] = {
            "median_s_per_step": float(np.median([r["s_per_step"] for r in mine])),
            "median_cpu_s_per_step": float(np.median([r["cpu_s"] / len(r["losses"]) for r in mine])),
            "backbone_passed": any(r["backbone_passed"] for r in mine),
        }
    return out


def _setting_stats(setting: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    floors = _floors(setting, params)
    sub_claims: dict[str, Any] = {"corr_mse_passes": _corr_mse_passes(setting, floors)}
    for name in SUB_CLAIMS:
        record = _sub_claim(setting, params, name)
        if record is not None:
            sub_claims[name] = record
    return {
        "anchor_ppl": {"held_out": perplexity_from(setting["anchor_nll"]["held_out"])},
        "lr_selection": _lr_selection(setting, params),
        "groups": _groups(setting, params),
        "contrasts": {n: _contrast(setting, params, "corr_mse", n) for n in params["objectives"] if n != "corr_mse"},
        "floors": floors,
        "sub_claims": sub_claims,
        "loss_vs_agreement": _loss_vs_agreement(setting, params),
        "cost": _cost(setting, params),
    }


def _gate(setting: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """Claim 1's gate: the anchor lowers held-out perplexity by >= 25 % and the bare backbone fails the
    held-out NIB against the anchor."""
    no_module = setting["comparisons"]["no_module"]
    return regime_gate(stats["anchor_ppl"]["held_out"], no_module["summary"]["ppl"], no_module["verdict"])


def derive(result: dict[str, Any]) -> dict[str, Any]:
    """Sections computed from the stored raw values alone; the verifier recomputes them the same way."""
    params, settings = result["parameters"], result["settings"]
    stats = {name: _setting_stats(setting, params) for name, setting in settings.items()}
    gates = {name: _gate(settings[name], stats[name]) for name in settings}
    rows = {
        name: {sub: gated(gates[name], record["verdict"]) for sub, record in stats[name]["sub_claims"].items()}
        for name in settings
    }
    verdict = combine(v for by_sub in rows.values() for v in by_sub.values())
    return {"setting_stats": stats, "regime_gates": gates, "row_verdicts": rows, "verdict": verdict}


def claim_verdict(result: dict[str, Any]) -> str:
    """The stored verdict (computed once by :func:`derive`, checked by the verifier)."""
    return result["verdict"]


def _glue_key(setting: str) -> str:
    return setting.replace("-", "_").replace("@", "_at_")


def glue_values(result: dict[str, Any]) -> dict[str, Any]:
    """Numbers the book's prose pulls in with myst-nb ``glue`` (never typed by hand)."""
    wall = sum(r.get("wall_s", 0.0) for r in result["resources"].values())
    values: dict[str, Any] = {
        "c3_verdict": claim_verdict(result),
        "c3_backbone": result["backbone"]["name"],
        "c3_n_seeds": len(result["parameters"]["candidate_seeds"]),
        "c3_minutes": round(wall / 60, 1),
    }
    for name in result["settings"]:
        view, key = setting_view(result, name), _glue_key(name)
        values[f"c3_{key}_testable"] = "yes" if view["gate"]["testable"] else "no"
        values[f"c3_{key}_ppl_reduction"] = view["gate"]["module_ppl_reduction"]
        values[f"c3_{key}_corr_top5"] = view["groups"]["corr_mse"]["top5"]["estimate"]
        for sub, verdict in view["row_verdict"].items():
            values[f"c3_{key}_{sub}"] = verdict
        for sub, record in view["sub_claims"].items():
            if "interval" in record:
                values.update(
                    {
                        f"c3_{key}_{sub}_estimate": record["interval"]["estimate"],
                        f"c3_{key}_{sub}_low": record["interval"]["low"],
                        f"c3_{key}_{sub}_high": record["interval"]["high"],
                    }
                )
        if "logit_mse" in view["groups"]:
            values[f"c3_{key}_logit_mse_top5"] = view["groups"]["logit_mse"]["top5"]["estimate"]
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
