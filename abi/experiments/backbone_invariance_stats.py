"""Claim 4's summaries from raw per-window values: perplexities, transfer efficacy under both
oracles, the ill-conditioning rule and flip rates (definitions: :mod:`abi.experiments.backbone_invariance`);
the claim's verdicts, the release's published figures, the conditions' labels and the glued values.

Perplexity intervals are window-bootstrap BCa intervals of the pooled NLL, exponentiated. Ratios
(efficacy, flip rates) use a paired percentile bootstrap: one set of resampled windows for every
condition, and no BCa, whose jackknife acceleration breaks down when a denominator nears zero.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from abi.stats import paired_window_statistic_ci, window_bootstrap_ci

PUBLISHED = {
    "setting": "backbone fine-tuned 1,000 steps on WikiText-2, old module applied zero-shot; "
    "oracle: a fresh module on the old backbone; pass at 50 %",
    "t5-large": {"raw_ppl": 35.22, "zero_shot_ppl": 25.61, "oracle_ppl": 32.06, "efficacy": 3.043},
    "gpt2-medium": {"efficacy": 0.653},
    "pass_efficacy": 0.5,
}
# Conditions on B (``B/...``) by name, and on an updated backbone B' by kind (``<update>/<kind>``).
CONDITION_LABELS = {
    "B/raw": "raw B",
    "B/module": "B + module",
    "B/fresh": "B + fresh module (original's oracle)",
    "raw": "raw B'",
    "zero_shot": "B' + old module (zero-shot)",
    "oracle": "B' + fresh module (our oracle)",
}


def condition_label(name: str) -> str:
    """``B/raw`` -> "raw B"; ``plain/zero_shot`` -> "B' + old module (zero-shot)"; another update is
    named in the label (``B'[protected]``)."""
    group, _, kind = name.partition("/")
    if group == "B":
        return CONDITION_LABELS[name]
    label = CONDITION_LABELS[kind]
    return label if group == "plain" else label.replace("B'", f"B'[{group}]")


def _pooled_perplexity(nll: np.ndarray, n_tokens: np.ndarray) -> np.ndarray:
    return np.exp(nll.sum(axis=-1) / n_tokens.sum(axis=-1))


def _perplexity_interval(nll: list[float], n_tokens: list[int], bootstrap: dict[str, int]) -> dict[str, Any]:
    tokens = np.asarray(n_tokens, dtype=float)
    interval = window_bootstrap_ci(
        np.asarray(nll) / tokens, tokens, n_resamples=bootstrap["n_resamples"], seed=bootstrap["seed"]
    )
    return {
        "estimate": math.exp(interval.estimate),
        "low": math.exp(interval.low),
        "high": math.exp(interval.high),
        "method": interval.method,
    }


def _efficacy_stat(arrays: dict[str, np.ndarray]) -> np.ndarray:
    raw = _pooled_perplexity(arrays["raw"], arrays["n"])
    return (raw - _pooled_perplexity(arrays["zero_shot"], arrays["n"])) / (
        raw - _pooled_perplexity(arrays["oracle"], arrays["n"])
    )


def _denominator_stat(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return _pooled_perplexity(arrays["raw"], arrays["n"]) - _pooled_perplexity(arrays["oracle"], arrays["n"])


def efficacy(
    nll: dict[str, list], n_tokens: list[int], update: str, oracle: str, params: dict[str, Any]
) -> dict[str, Any]:
    """Efficacy of ``update``'s zero-shot module against the ``oracle`` condition, with its paired
    interval, the denominator's interval, the ill-conditioning flag and the verdict."""
    bootstrap = params["bootstrap"]
    arrays = {
        "raw": nll[f"{update}/raw"],
        "zero_shot": nll[f"{update}/zero_shot"],
        "oracle": nll[oracle],
        "n": n_tokens,
    }
    resampling = {"n_resamples": bootstrap["n_resamples"], "seed": bootstrap["seed"]}
    ratio = paired_window_statistic_ci(arrays, _efficacy_stat, **resampling)
    denominator = paired_window_statistic_ci(arrays, _denominator_stat, **resampling)
    raw_ppl = float(_pooled_perplexity(np.asarray(arrays["raw"]), np.asarray(n_tokens, dtype=float)))
    threshold = params["ill_conditioned_fraction"] * raw_ppl
    ill_conditioned = not denominator.low >= threshold  # also True when the bound is NaN
    line = params["pass_efficacy"]
    if ill_conditioned:
        verdict = "ill-conditioned"
    elif ratio.low >= line:
        verdict = "PASS"
    elif ratio.high < line:
        verdict = "FAIL"
    else:
        verdict = "inconclusive"
    return {
        **ratio.to_dict(),
        "denominator": denominator.to_dict(),
        "ill_conditioned_below": threshold,
        "denominator_above_zero": bool(denominator.low > 0),
        "ill_conditioned": ill_conditioned,
        "point_pass": bool(ratio.estimate >= line),
        "verdict": verdict,
        "oracle": oracle,
    }


def _rate(counts: list, totals: list, bootstrap: dict[str, int]) -> dict[str, Any]:
    rate = paired_window_statistic_ci(
        {"k": counts, "n": totals},
        lambda d: d["k"].sum(-1) / d["n"].sum(-1),
        n_resamples=bootstrap["n_resamples"],
        seed=bootstrap["seed"],
    )
    return {**rate.to_dict(), "count": int(sum(counts)), "of": int(sum(totals))}


def summarize_block(block: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Every summary of one backbone's block: perplexities, efficacies, flip rates, prose perplexity."""
    bootstrap, windows = params["bootstrap"], block["windows"]
    n_tokens = windows["n_tokens"]
    nll = windows["nll"]
    wrong = {name: [n - c for n, c in zip(n_tokens, windows["correct"][name])] for name in windows["correct"]}
    out: dict[str, Any] = {
        "ppl": {name: _perplexity_interval(values, n_tokens, bootstrap) for name, values in nll.items()},
        "efficacy": {},
        "negative_flip_rate": {},
        "positive_flip_rate": {},
    }
    for update in block["updates"]:
        out["efficacy"][update] = {
            "ours": efficacy(nll, n_tokens, update, f"{update}/oracle", params),
            "original": efficacy(nll, n_tokens, update, "B/fresh", params),
        }
        out["negative_flip_rate"][update] = {
            kind: _rate(windows["negative_flips"][f"{update}/{kind}"], windows["correct"][before], bootstrap)
            for kind, before in (("module", "B/module"), ("raw", "B/raw"))
        }
        out["positive_flip_rate"][update] = {
            kind: _rate(windows["positive_flips"][f"{update}/{kind}"], wrong[before], bootstrap)
            for kind, before in (("module", "B/module"), ("raw", "B/raw"))
        }
    prose = block["prose"]
    out["prose_ppl"] = {
        name: _perplexity_interval(values, prose["n_tokens"], bootstrap) for name, values in prose["nll"].items()
    }
    return out


def derive(result: dict[str, Any]) -> dict[str, Any]:
    """Summaries and verdicts from the raw per-window values; the verifier recomputes them the same way."""
    params = result["parameters"]
    summary = {name: summarize_block(block, params) for name, block in result["backbones"].items()}
    verdicts = {
        name: {
            update: {oracle: eff["verdict"] for oracle, eff in by_oracle.items()}
            for update, by_oracle in block_summary["efficacy"].items()
        }
        for name, block_summary in summary.items()
    }
    return {"summary": summary, "verdicts": verdicts}


# -- verdicts and glue ------------------------------------------------------------------------------
def claim_verdict(result: dict[str, Any]) -> str:
    """The claim's verdict from the unprotected update under our oracle, over every backbone."""
    verdicts = [v["plain"]["ours"] for v in result["verdicts"].values()]
    if all(v == "PASS" for v in verdicts):
        return "reproduced"
    if any(v == "PASS" for v in verdicts):
        return "reproduced on some backbones only"
    if all(v == "FAIL" for v in verdicts):
        return "not reproduced"
    return "not reproduced (inconclusive or ill-conditioned)"


def glue_name(name: str) -> str:
    """A backbone or condition name as a glue key part: ``tiny-t5`` -> ``tiny_t5``."""
    return "".join(c if c.isalnum() else "_" for c in name)


def glue_values(result: dict[str, Any]) -> dict[str, Any]:
    """Numbers the book's prose pulls in with myst-nb ``glue`` (never typed by hand)."""
    values: dict[str, Any] = {
        "c4_verdict": claim_verdict(result),
        "c4_backbones": ", ".join(result["summary"]),
        "c4_minutes": round(sum(result["timings"].values()) / 60, 1),
    }
    for name, summary in result["summary"].items():
        prefix = f"c4_{glue_name(name)}"
        efficacies = summary["efficacy"]["plain"]
        for oracle in ("ours", "original"):
            values[f"{prefix}_efficacy_{oracle}"] = efficacies[oracle]["estimate"]
            values[f"{prefix}_efficacy_{oracle}_low"] = efficacies[oracle]["low"]
            values[f"{prefix}_efficacy_{oracle}_high"] = efficacies[oracle]["high"]
            values[f"{prefix}_verdict_{oracle}"] = efficacies[oracle]["verdict"]
        for condition, perplexity in summary["ppl"].items():
            values[f"{prefix}_ppl_{glue_name(condition)}"] = perplexity["estimate"]
        values[f"{prefix}_negative_flips"] = summary["negative_flip_rate"]["plain"]["module"]["estimate"]
        values[f"{prefix}_prose_before"] = summary["prose_ppl"]["B"]["estimate"]
        values[f"{prefix}_prose_after"] = summary["prose_ppl"]["plain"]["estimate"]
    return values
