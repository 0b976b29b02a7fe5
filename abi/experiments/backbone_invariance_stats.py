"""Claim 4's derived sections from the raw per-window values only: perplexities, both efficacy formulas
under both oracles, the two gates, the row verdicts and the claim's verdict (definitions:
:mod:`abi.experiments.backbone_invariance`).

Rules fixed before any run (pre-registered):

* **Regime gate** (:func:`abi.verdicts.regime_gate`), per setting: the pre-update modules lower held-out
  domain perplexity on B by >= 25 % (geometric mean over module seeds) and the bare B FAILS the held-out
  NIB against every module seed's module. Otherwise the setting is "not testable in this regime".
* **Update gate**, per setting, update arm and update seed (and module seed for the protected arm, whose
  update depends on the module): the update lowers B's held-out prose perplexity AND changes B's bare
  held-out domain perplexity by at least ``update_min_change`` (10 %; the release's T5 update moved it
  63.7 -> 35.2). An arm is testable only when every one of its updates takes; otherwise its verdict is
  "not testable in this regime" (an update that did not take tests nothing).
* **Efficacy**, per cell (update seed x module seed), with raw = bare B', zero-shot = B' + old module:
  the FAQ's formula ``(raw - zero_shot) / (raw - oracle)`` and the release code's GPT-2-medium formula
  ``((raw - zero_shot) / raw) / ((oracle_baseline - oracle) / oracle_baseline)`` (a ratio of relative
  gains whose baselines differ: the oracle's own bare backbone). Under our oracle (fresh module on B')
  the baselines coincide and both formulas agree; under the original's oracle (fresh module on B, its
  baseline raw B) they differ. The estimate is the mean over the seed grid; its 95 % interval comes from
  a **hierarchical percentile bootstrap**: each resample draws update seeds and module seeds with
  replacement (two-way, crossed) and the held-out windows with replacement (paired across conditions),
  so seed-to-seed and window-to-window variation both enter.
* **Ill-conditioned**: the FAQ denominator's interval (raw - oracle, same bootstrap) reaches below
  ``ill_conditioned_fraction`` (10 %) of the raw B' perplexity.
* **Efficacy verdict**: ill-conditioned overrides; else PASS when the interval's lower end is at least
  ``pass_efficacy`` (50 %), FAIL when its upper end is below, else inconclusive. In the one vocabulary:
  PASS -> reproduced; FAIL or inconclusive -> not reproduced (reproducing needs the lower end above the
  line); ill-conditioned -> not testable in this regime (the oracle's own gain on B' is too small to
  measure a share of it: the same situation the regime gate excludes, a module that barely matters).
* **Row verdict** per setting: the unprotected (plain) update under our oracle, FAQ formula, gated by the
  regime gate and the plain arm's update gate. **Claim verdict**: :func:`abi.verdicts.combine` of the rows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from abi.stats import window_bootstrap_ci
from abi.verdicts import NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED, combine, gated, regime_gate

SCHEMA_VERSION = 3  # 3: settings (domain), update x module seed grid, update gates, both efficacy formulas

PUBLISHED = {
    "setting": "backbone fine-tuned 1,000 steps on WikiText-2 with a stability term, old module applied "
    "zero-shot; pass at 50 %",
    "t5-large": {"raw_ppl": 35.22, "zero_shot_ppl": 25.61, "oracle_ppl": 32.06, "efficacy": 3.043},
    # scale_validation_results.json of the release: raw B', B' + old module, the oracle's own baseline
    # (updated backbone with the oracle's re-trained interface, no domain) and the oracle.
    "gpt2-medium": {
        "raw_ppl": 30.12,
        "zero_shot_ppl": 17.55,
        "oracle_baseline_ppl": 21.68,
        "oracle_ppl": 7.81,
        "efficacy": 0.653,
    },
    "pass_efficacy": 0.5,
}
FORMULAS = ("faq", "release_code")
FORMULA_LABELS = {
    "faq": "FAQ: (raw - zero-shot) / (raw - oracle)",
    "release_code": "release code: relative gains, different baselines",
}
ORACLES = ("ours", "original")
ORACLE_LABELS = {"ours": "fresh module on B' (ours)", "original": "fresh module on B (original's)"}
ARM_LABELS = {"plain": "unprotected update", "protected": "protected update (release's stability term)"}
# What the efficacy verdict becomes in the one vocabulary (see the module docstring for why).
VERDICT_MAP = {
    "PASS": REPRODUCED,
    "FAIL": NOT_REPRODUCED,
    "inconclusive": NOT_REPRODUCED,
    "ill-conditioned": NOT_TESTABLE,
}


# -- the two formulas ----------------------------------------------------------------------------------
def faq_efficacy(raw: Any, zero_shot: Any, oracle: Any) -> Any:
    """The FAQ's transfer efficacy: the share of the oracle's perplexity gain the old module keeps."""
    return (raw - zero_shot) / (raw - oracle)


def release_code_efficacy(raw: Any, zero_shot: Any, oracle_baseline: Any, oracle: Any) -> Any:
    """The release code's (GPT-2-medium): the zero-shot relative gain over the oracle's relative gain,
    each against its own baseline."""
    return ((raw - zero_shot) / raw) / ((oracle_baseline - oracle) / oracle_baseline)


# -- perplexities and the hierarchical bootstrap -------------------------------------------------------
def _pooled(nll: np.ndarray, n_tokens: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pooled perplexity ``exp(sum NLL / sum tokens)`` per row of window weights ``[R, W]``."""
    return np.exp((weights @ nll) / (weights @ n_tokens))


def perplexity(nll: list[float], n_tokens: list[int]) -> float:
    return math.exp(float(np.sum(nll)) / float(np.sum(n_tokens)))


def perplexity_interval(nll: list[float], n_tokens: list[int], bootstrap: dict[str, int]) -> dict[str, Any]:
    """Pooled perplexity with its window-bootstrap BCa interval (exponentiated)."""
    tokens = np.asarray(n_tokens, dtype=float)
    ci = window_bootstrap_ci(
        np.asarray(nll) / tokens, tokens, n_resamples=bootstrap["n_resamples"], seed=bootstrap["seed"]
    )
    return {"estimate": math.exp(ci.estimate), "low": math.exp(ci.low), "high": math.exp(ci.high)}


def _cell_statistic(cell: dict[str, np.ndarray], base: dict[str, np.ndarray], kind: str, oracle: str) -> np.ndarray:
    """One cell's statistic per resample, from its pooled perplexities ``[R]``."""
    raw, zero_shot = cell["raw"], cell["zero_shot"]
    oracle_ppl = cell["oracle"] if oracle == "ours" else base["fresh"]
    baseline = raw if oracle == "ours" else base["raw"]
    if kind == "denominator":
        return raw - oracle_ppl
    if kind == "faq":
        return faq_efficacy(raw, zero_shot, oracle_ppl)
    return release_code_efficacy(raw, zero_shot, baseline, oracle_ppl)


def grid_statistic(
    setting: dict[str, Any], arm: str, kind: str, oracle: str, bootstrap: dict[str, int]
) -> dict[str, Any]:
    """Mean over the arm's seed grid of a cell statistic, per-cell values, and the hierarchical
    percentile interval (update seeds, module seeds and windows resampled together)."""
    n_tokens = np.asarray(setting["windows"]["n_tokens"], dtype=float)
    cells = setting["cells"][arm]
    update_seeds = sorted({key.split("/")[0] for key in cells}, key=int)
    module_seeds = sorted({key.split("/")[1] for key in cells}, key=int)
    n_windows, n_resamples = len(n_tokens), bootstrap["n_resamples"]
    rng = np.random.default_rng(bootstrap["seed"])
    index = rng.integers(0, n_windows, size=(n_resamples, n_windows))
    weights = np.stack([np.bincount(row, minlength=n_windows) for row in index]).astype(float)
    weights = np.vstack([np.ones(n_windows), weights])  # row 0: every window once (the estimate)
    nll = setting["nll"]
    base = {name: _pooled(np.asarray(nll[f"B/{name}"]), n_tokens, weights) for name in ("raw", "fresh")}
    grid = np.empty((len(weights), len(update_seeds), len(module_seeds)))
    for i, u in enumerate(update_seeds):
        for j, m in enumerate(module_seeds):
            cell = {k: _pooled(np.asarray(v), n_tokens, weights) for k, v in cells[f"{u}/{m}"].items()}
            with np.errstate(divide="ignore", invalid="ignore"):
                grid[:, i, j] = _cell_statistic(cell, base, kind, oracle)
    pick_u = rng.integers(0, len(update_seeds), size=(n_resamples, len(update_seeds)))
    pick_m = rng.integers(0, len(module_seeds), size=(n_resamples, len(module_seeds)))
    resampled = grid[1:][np.arange(n_resamples)[:, None, None], pick_u[:, :, None], pick_m[:, None, :]]
    means = resampled.mean(axis=(1, 2))
    finite = means[np.isfinite(means)]
    estimate = float(grid[0].mean())
    low, high = (float(np.percentile(finite, q)) for q in (2.5, 97.5)) if finite.size else (math.nan, math.nan)
    return {
        "estimate": estimate,
        "low": low,
        "high": high,
        "method": f"hierarchical percentile bootstrap (update x module seeds x windows; {n_resamples - finite.size} "
        "undefined resamples left out)",
        "cells": {
            f"{u}/{m}": float(grid[0, i, j]) for i, u in enumerate(update_seeds) for j, m in enumerate(module_seeds)
        },
    }


def efficacy_record(setting: dict[str, Any], arm: str, params: dict[str, Any]) -> dict[str, Any]:
    """Both formulas under both oracles for one arm, the denominator, the ill-conditioning flag, verdicts."""
    bootstrap = params["bootstrap"]
    raw_ppl = float(
        np.mean([perplexity(c["raw"], setting["windows"]["n_tokens"]) for c in setting["cells"][arm].values()])
    )
    out: dict[str, Any] = {}
    for oracle in ORACLES:
        denominator = grid_statistic(setting, arm, "denominator", oracle, bootstrap)
        threshold = params["ill_conditioned_fraction"] * raw_ppl
        ill = not denominator["low"] >= threshold  # also True when the bound is NaN
        out[oracle] = {"denominator": denominator, "ill_conditioned_below": threshold, "ill_conditioned": ill}
        for formula in FORMULAS:
            ratio = grid_statistic(setting, arm, formula, oracle, bootstrap)
            out[oracle][formula] = {**ratio, "verdict": _efficacy_verdict(ratio, ill, params["pass_efficacy"])}
    return out


def _efficacy_verdict(ratio: dict[str, Any], ill_conditioned: bool, line: float) -> str:
    if ill_conditioned:
        return "ill-conditioned"
    if ratio["low"] >= line:
        return "PASS"
    if ratio["high"] < line:
        return "FAIL"
    return "inconclusive"


# -- gates ---------------------------------------------------------------------------------------------
def update_gates(setting: dict[str, Any], min_change: float) -> dict[str, Any]:
    """Per arm and update (cell key, or update seed for the plain arm): did the update take?"""
    n_tokens, prose = setting["windows"]["n_tokens"], setting["prose"]
    raw_b = perplexity(setting["nll"]["B/raw"], n_tokens)
    prose_b = perplexity(prose["nll"]["B"], prose["n_tokens"])
    gates: dict[str, Any] = {}
    for arm, cells in setting["cells"].items():
        per_update = {}
        for key, cell in cells.items():
            update = key.split("/")[0] if arm == "plain" else key
            if update in per_update:
                continue  # the plain update is shared by every module seed
            prose_after = perplexity(prose["nll"][f"{arm}/{update}"], prose["n_tokens"])
            raw_after = perplexity(cell["raw"], n_tokens)
            change = raw_after / raw_b - 1.0
            per_update[update] = {
                "prose_ppl_before": prose_b,
                "prose_ppl_after": prose_after,
                "domain_ppl_before": raw_b,
                "domain_ppl_after": raw_after,
                "domain_change": change,
                "takes": bool(prose_after < prose_b and abs(change) >= min_change),
            }
        gates[arm] = {"updates": per_update, "testable": all(g["takes"] for g in per_update.values())}
    return gates


def _regime_gate(setting: dict[str, Any]) -> dict[str, Any]:
    n_tokens = setting["windows"]["n_tokens"]
    module_seeds = setting["module_seeds"]
    log_ppl = [math.log(perplexity(setting["nll"][f"B/module/{m}"], n_tokens)) for m in module_seeds]
    bare = [setting["comparisons"][f"no_module/{m}"]["verdict"] for m in module_seeds]
    return regime_gate(
        math.exp(float(np.mean(log_ppl))),
        perplexity(setting["nll"]["B/raw"], n_tokens),
        "FAIL" if all(v == "FAIL" for v in bare) else "PASS",
    )


def _rate(counts: list[list[int]], totals: list[list[int]]) -> float:
    denominator = float(np.sum(totals))
    return float(np.sum(counts)) / denominator if denominator else math.nan


def _flip_rates(setting: dict[str, Any]) -> dict[str, Any]:
    """Negative flips pooled over the arm's cells: right on B, wrong on B' (module: with the old module)."""
    out = {}
    for arm, cells in setting["flips"].items():
        module = [c["module"] for c in cells.values()]
        module_totals = [setting["correct"][f"B/module/{key.split('/')[1]}"] for key in cells]
        raw = [c["raw"] for c in cells.values()]
        raw_totals = [setting["correct"]["B/raw"] for _ in cells]
        out[arm] = {"module": _rate(module, module_totals), "raw": _rate(raw, raw_totals)}
    return out


def _setting_stats(setting: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    n_tokens, bootstrap = setting["windows"]["n_tokens"], params["bootstrap"]
    nll = setting["nll"]
    ppl = {name: perplexity_interval(values, n_tokens, bootstrap) for name, values in nll.items()}
    cell_ppl = {
        arm: {key: {k: perplexity(v, n_tokens) for k, v in cell.items()} for key, cell in cells.items()}
        for arm, cells in setting["cells"].items()
    }
    prose = setting["prose"]
    return {
        "ppl": ppl,
        "cell_ppl": cell_ppl,
        "prose_ppl": {name: perplexity(values, prose["n_tokens"]) for name, values in prose["nll"].items()},
        "efficacy": {arm: efficacy_record(setting, arm, params) for arm in setting["cells"]},
        "negative_flip_rate": _flip_rates(setting),
    }


def _row_verdict(stats: dict[str, Any], gate: dict[str, Any], update_gate: dict[str, Any]) -> str:
    verdict = VERDICT_MAP[stats["efficacy"]["plain"]["ours"]["faq"]["verdict"]]
    return gated(gate, verdict if update_gate["plain"]["testable"] else NOT_TESTABLE)


def derive(result: dict[str, Any]) -> dict[str, Any]:
    """Sections computed from the stored raw values alone; the verifier recomputes them the same way."""
    params, settings = result["parameters"], result["settings"]
    stats = {name: _setting_stats(setting, params) for name, setting in settings.items()}
    gates = {name: _regime_gate(setting) for name, setting in settings.items()}
    updates = {name: update_gates(setting, params["update_min_change"]) for name, setting in settings.items()}
    rows = {name: _row_verdict(stats[name], gates[name], updates[name]) for name in settings}
    arm_verdicts = {
        name: {
            arm: gated(
                gates[name],
                VERDICT_MAP[record["ours"]["faq"]["verdict"]] if updates[name][arm]["testable"] else NOT_TESTABLE,
            )
            for arm, record in stats[name]["efficacy"].items()
        }
        for name in settings
    }
    return {
        "setting_stats": stats,
        "regime_gates": gates,
        "update_gates": updates,
        "arm_verdicts": arm_verdicts,
        "row_verdicts": rows,
        "verdict": combine(rows.values()),
    }


def claim_verdict(result: dict[str, Any]) -> str:
    """The stored verdict (computed once by :func:`derive`, checked by the verifier)."""
    return result["verdict"]


def glue_key(name: str) -> str:
    """A setting or condition name as a glue key part: ``python-dialect`` -> ``python_dialect``."""
    return "".join(c if c.isalnum() else "_" for c in name)


def glue_values(result: dict[str, Any]) -> dict[str, Any]:
    """Numbers the book's prose pulls in with myst-nb ``glue`` (never typed by hand)."""
    values: dict[str, Any] = {
        "c4_verdict": result["verdict"],
        "c4_backbone": result["parameters"]["backbone"],
        "c4_settings": ", ".join(result["settings"]),
        "c4_minutes": round(sum(sum(t.values()) for t in result["timings"].values()) / 60, 1),
    }
    for name, stats in result["setting_stats"].items():
        key = f"c4_{glue_key(name)}"
        gate, plain = result["regime_gates"][name], stats["efficacy"]["plain"]
        values[f"{key}_verdict"] = result["row_verdicts"][name]
        values[f"{key}_ppl_reduction"] = gate["module_ppl_reduction"]
        values[f"{key}_bare_nib"] = gate["bare_backbone_nib"]
        values[f"{key}_update_takes"] = result["update_gates"][name]["plain"]["testable"]
        for oracle in ORACLES:
            for formula in FORMULAS:
                record = plain[oracle][formula]
                for part in ("estimate", "low", "high"):
                    suffix = "" if part == "estimate" else f"_{part}"
                    values[f"{key}_efficacy_{oracle}_{formula}{suffix}"] = record[part]
        values[f"{key}_negative_flips"] = stats["negative_flip_rate"]["plain"]["module"]
        values[f"{key}_ppl_raw_B"] = stats["ppl"]["B/raw"]["estimate"]
    return values
