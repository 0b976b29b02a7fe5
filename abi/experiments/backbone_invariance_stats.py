"""Claim 4's summaries from raw per-window values: perplexities, transfer efficacy under both
oracles, the ill-conditioning rule and flip rates (definitions: :mod:`abi.experiments.backbone_invariance`).

Perplexity intervals are window-bootstrap BCa intervals of the pooled NLL, exponentiated. Ratios
(efficacy, flip rates) use a paired percentile bootstrap: one set of resampled windows for every
condition, and no BCa, whose jackknife acceleration breaks down when a denominator nears zero.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from abi.stats import paired_window_statistic_ci, window_bootstrap_ci


def _ppl(nll: np.ndarray, n: np.ndarray) -> np.ndarray:
    return np.exp(nll.sum(axis=-1) / n.sum(axis=-1))


def _ppl_ci(nll: list[float], n_tokens: list[int], boot: dict[str, int]) -> dict[str, Any]:
    n = np.asarray(n_tokens, dtype=float)
    ci = window_bootstrap_ci(np.asarray(nll) / n, n, n_resamples=boot["n_resamples"], seed=boot["seed"])
    return {"estimate": math.exp(ci.estimate), "low": math.exp(ci.low), "high": math.exp(ci.high),
            "method": ci.method}


def _efficacy_stat(d: dict[str, np.ndarray]) -> np.ndarray:
    raw = _ppl(d["raw"], d["n"])
    return (raw - _ppl(d["zero_shot"], d["n"])) / (raw - _ppl(d["oracle"], d["n"]))


def _denominator_stat(d: dict[str, np.ndarray]) -> np.ndarray:
    return _ppl(d["raw"], d["n"]) - _ppl(d["oracle"], d["n"])


def efficacy(nll: dict[str, list], n_tokens: list[int], update: str, oracle: str,
             params: dict[str, Any]) -> dict[str, Any]:
    """Efficacy of ``update``'s zero-shot module against the ``oracle`` condition, with its paired
    interval, the denominator's interval, the ill-conditioning flag and the verdict."""
    boot = params["bootstrap"]
    arrays = {"raw": nll[f"{update}/raw"], "zero_shot": nll[f"{update}/zero_shot"], "oracle": nll[oracle],
              "n": n_tokens}
    kw = {"n_resamples": boot["n_resamples"], "seed": boot["seed"]}
    ratio = paired_window_statistic_ci(arrays, _efficacy_stat, **kw)
    denominator = paired_window_statistic_ci(arrays, _denominator_stat, **kw)
    raw_ppl = float(_ppl(np.asarray(arrays["raw"]), np.asarray(n_tokens, dtype=float)))
    threshold = params["ill_conditioned_fraction"] * raw_ppl
    ill = not denominator.low >= threshold  # also True when the bound is NaN
    line = params["pass_efficacy"]
    if ill:
        verdict = "ill-conditioned"
    elif ratio.low >= line:
        verdict = "PASS"
    elif ratio.high < line:
        verdict = "FAIL"
    else:
        verdict = "inconclusive"
    return {**ratio.to_dict(), "denominator": denominator.to_dict(), "ill_conditioned_below": threshold,
            "denominator_above_zero": bool(denominator.low > 0),
            "ill_conditioned": ill, "point_pass": bool(ratio.estimate >= line), "verdict": verdict,
            "oracle": oracle}


def _rate(counts: list, totals: list, boot: dict[str, int]) -> dict[str, Any]:
    ci = paired_window_statistic_ci({"k": counts, "n": totals}, lambda d: d["k"].sum(-1) / d["n"].sum(-1),
                                    n_resamples=boot["n_resamples"], seed=boot["seed"])
    return {**ci.to_dict(), "count": int(sum(counts)), "of": int(sum(totals))}


def summarize_block(block: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Every summary of one backbone's block: perplexities, efficacies, flip rates, prose perplexity."""
    boot, windows = params["bootstrap"], block["windows"]
    n_tokens = windows["n_tokens"]
    nll = windows["nll"]
    wrong = {name: [n - c for n, c in zip(n_tokens, windows["correct"][name])] for name in windows["correct"]}
    out: dict[str, Any] = {"ppl": {name: _ppl_ci(values, n_tokens, boot) for name, values in nll.items()},
                           "efficacy": {}, "negative_flip_rate": {}, "positive_flip_rate": {}}
    for update in block["updates"]:
        out["efficacy"][update] = {"ours": efficacy(nll, n_tokens, update, f"{update}/oracle", params),
                                   "original": efficacy(nll, n_tokens, update, "B/fresh", params)}
        out["negative_flip_rate"][update] = {
            kind: _rate(windows["negative_flips"][f"{update}/{kind}"], windows["correct"][before], boot)
            for kind, before in (("module", "B/module"), ("raw", "B/raw"))}
        out["positive_flip_rate"][update] = {
            kind: _rate(windows["positive_flips"][f"{update}/{kind}"], wrong[before], boot)
            for kind, before in (("module", "B/module"), ("raw", "B/raw"))}
    prose = block["prose"]
    out["prose_ppl"] = {name: _ppl_ci(values, prose["n_tokens"], boot) for name, values in prose["nll"].items()}
    return out
