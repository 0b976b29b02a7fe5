"""Claim 2's derived sections, computed from the raw per-window values of a result file only.

The notebook's writer and the verifier both call :func:`derive` (registered as the claim's
deriver), so a summary, interval, contrast or verdict in the file can never disagree with its data.

Rules fixed before any run:

* **Contrasts** are paired by window (every arm is scored on the same held-out windows):
  95 % window-bootstrap intervals of the top-5 difference ``migrated - control`` per seed, and
  pooled over seeds (each window's difference averaged over the seeds first).
* **Migrated beats the random module** when the pooled interval *and* every seed's interval lie
  above zero ("yes"); "mixed" when only the pooled one does; "worse" when the pooled interval lies
  below zero; otherwise "no".
* **Claim verdict** per pair: "reproduced" when the migrated module passes the held-out NIB for
  every seed *and* beats the random module; the other three outcomes are named for what failed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from abi.results import perplexity_from
from abi.stats import non_inferiority, paired_difference_ci, seed_interval

ARMS = ("migrated", "random_module", "procrustes_only", "random_init_kd", "also_trained", "no_module", "ceiling")
SEEDED_ARMS = ARMS[:5]
CONTROLS = ("random_module", "no_module", "procrustes_only", "random_init_kd")
GROUP_METRICS = ("top5", "top1", "js", "entropy_diff", "ppl")


def pair_comparisons(section: dict[str, Any], key: str) -> dict[str, Any]:
    """The comparisons of one pair, keyed ``arm`` or ``arm/seed`` (the pair prefix removed)."""
    prefix = f"{key}/"
    return {name[len(prefix):]: c for name, c in section.items() if name.startswith(prefix)}


def _member(arm: str, seed: int) -> str:
    return arm if arm in ("no_module", "ceiling") else f"{arm}/{seed}"


def _difference(a: dict, b: dict, metric: str, boot: dict[str, int]) -> dict[str, Any]:
    ci = paired_difference_ci(a["per_window"][metric], b["per_window"][metric], a["per_window"]["n_positions"],
                              n_resamples=boot["n_resamples"], seed=boot["seed"]).to_dict()
    return {**ci, "excludes_zero": bool(ci["low"] > 0 or ci["high"] < 0)}


def _pooled_difference(cmp: dict[str, Any], seeds: list[int], control: str, metric: str,
                       boot: dict[str, int]) -> dict[str, Any]:
    """Each window's ``migrated - control`` averaged over the seeds, then a window bootstrap."""
    a = np.mean([cmp[f"migrated/{s}"]["per_window"][metric] for s in seeds], axis=0)
    b = np.mean([cmp[_member(control, s)]["per_window"][metric] for s in seeds], axis=0)
    n = cmp[f"migrated/{seeds[0]}"]["per_window"]["n_positions"]
    ci = paired_difference_ci(a, b, n, n_resamples=boot["n_resamples"], seed=boot["seed"]).to_dict()
    return {**ci, "excludes_zero": bool(ci["low"] > 0 or ci["high"] < 0)}


def _contrasts(cmp: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    seeds, boot = list(params["seeds"]), params["bootstrap"]
    per_seed = {}
    for seed in seeds:
        migrated = cmp[f"migrated/{seed}"]
        record = {f"migrated_minus_{c}": _difference(migrated, cmp[_member(c, seed)], "top5", boot) for c in CONTROLS}
        record["migrated_minus_random_module_js"] = _difference(migrated, cmp[f"random_module/{seed}"], "js", boot)
        record["also_trained_minus_migrated"] = _difference(cmp[f"also_trained/{seed}"], migrated, "top5", boot)
        record["non_inferior_to_ceiling"] = non_inferiority(
            migrated["per_window"]["top5"], cmp["ceiling"]["per_window"]["top5"], migrated["per_window"]["n_positions"],
            params["ni_margin"], True, n_resamples=boot["n_resamples"], seed=boot["seed"])
        per_seed[str(seed)] = record
    pooled = {f"migrated_minus_{c}": _pooled_difference(cmp, seeds, c, "top5", boot) for c in CONTROLS}
    differences = [cmp[f"migrated/{s}"]["summary"]["top5"] - cmp[f"random_module/{s}"]["summary"]["top5"]
                   for s in seeds]
    pooled["migrated_minus_random_module_seed_interval"] = seed_interval(differences).to_dict()
    return {"per_seed": per_seed, "pooled": pooled}


def _beats(contrasts: dict[str, Any], seeds: list[int]) -> str:
    pooled = contrasts["pooled"]["migrated_minus_random_module"]
    every_seed = all(contrasts["per_seed"][str(s)]["migrated_minus_random_module"]["low"] > 0 for s in seeds)
    if pooled["low"] > 0:
        return "yes" if every_seed else "mixed"
    return "worse" if pooled["high"] < 0 else "no"


def _claim(passes: bool, beats: str) -> str:
    if passes and beats == "yes":
        return "reproduced"
    if passes:
        return "NIB passes, but the migrated module does not beat a random module put through the same calibration"
    if beats == "yes":
        return "not reproduced: NIB fails, though the migrated module beats the random-module control"
    return "not reproduced"


def _perplexities(block: dict[str, Any]) -> dict[str, Any]:
    return {"reference": perplexity_from(block["reference_nll"]),
            "source": {name: perplexity_from(nll) for name, nll in block["source_nll"].items()}}


def derive(result: dict[str, Any]) -> dict[str, Any]:
    """Groups (seed intervals), contrasts, perplexities and verdicts of every pair."""
    params = result["parameters"]
    seeds = list(params["seeds"])
    out: dict[str, dict[str, Any]] = {"groups": {}, "contrasts": {}, "perplexities": {}, "verdicts": {}}
    for key in result["pair_keys"]:
        cmp = pair_comparisons(result["comparisons"], key)
        official = pair_comparisons(result["official"], key)
        out["groups"][key] = {
            arm: {m: seed_interval([cmp[f"{arm}/{s}"]["summary"][m] for s in seeds]).to_dict() for m in GROUP_METRICS}
            for arm in SEEDED_ARMS
        }
        contrasts = _contrasts(cmp, params)
        out["contrasts"][key] = contrasts
        out["perplexities"][key] = _perplexities(result["pairs"][key])
        held = {str(s): cmp[f"migrated/{s}"]["verdict"] for s in seeds}
        beats = _beats(contrasts, seeds)
        out["verdicts"][key] = {
            "held_out_nib_migrated": held,
            "official_nib_migrated": {str(s): official[f"migrated/{s}"]["verdict"] for s in seeds
                                      if f"migrated/{s}" in official},
            "held_out_nib_by_arm": {name: c["verdict"] for name, c in cmp.items()},
            "migrated_beats_random_module": beats,
            "claim": _claim(all(v == "PASS" for v in held.values()), beats),
        }
    return out
