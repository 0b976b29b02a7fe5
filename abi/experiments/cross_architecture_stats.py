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
  The claim is reproduced when every pair reproduces it (:func:`claim_verdict`).

Also here, because the book's prose and tables read them without loading any model: the release's
published figures (:data:`PUBLISHED`), the arms' labels and the glued values.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from abi.results import perplexity_from
from abi.stats import non_inferiority, paired_difference_ci, seed_interval

PUBLISHED = {
    "setting": "T5-large -> GPT-2-medium (both d=1024); 1 tap, bottleneck 256; Procrustes on 2,000 shared "
    "sentences; 1,200 KD steps (0.9 KL at T=2 + 0.1 CE); anchor: a native GPT-2-medium module (500 steps)",
    "official": {"top5": 0.8699, "top1": 0.9252, "js": 0.01787, "entropy_diff": 0.2819},
    "cross_family": {"pair": "GPT-2-small -> Qwen2.5-0.5B", "top5": 0.8701},
}
ARMS = ("migrated", "random_module", "procrustes_only", "random_init_kd", "also_trained", "no_module", "ceiling")
ARM_LABELS = {
    "migrated": "migrated module (Procrustes + KD, domain frozen): the claim",
    "random_module": "random module, same Procrustes + KD (floor)",
    "procrustes_only": "Procrustes only, 0 KD steps",
    "random_init_kd": "random interface + KD, no Procrustes",
    "also_trained": "Procrustes + KD of every weight (original code)",
    "no_module": "no module: bare target (floor)",
    "ceiling": "second native module, other seed (ceiling)",
}
SEEDED_ARMS = ARMS[:5]
CONTROLS = ("random_module", "no_module", "procrustes_only", "random_init_kd")
GROUP_METRICS = ("top5", "top1", "js", "entropy_diff", "ppl")


def pair_comparisons(section: dict[str, Any], key: str) -> dict[str, Any]:
    """The comparisons of one pair, keyed ``arm`` or ``arm/seed`` (the pair prefix removed)."""
    prefix = f"{key}/"
    return {name[len(prefix) :]: c for name, c in section.items() if name.startswith(prefix)}


def _comparison_name(arm: str, seed: int) -> str:
    """``arm/seed`` for a seeded arm; the unseeded arms (bare target, ceiling) have one comparison."""
    return arm if arm in ("no_module", "ceiling") else f"{arm}/{seed}"


def _difference(candidate: dict, control: dict, metric: str, bootstrap: dict[str, int]) -> dict[str, Any]:
    interval = paired_difference_ci(
        candidate["per_window"][metric],
        control["per_window"][metric],
        candidate["per_window"]["n_positions"],
        n_resamples=bootstrap["n_resamples"],
        seed=bootstrap["seed"],
    ).to_dict()
    return {**interval, "excludes_zero": bool(interval["low"] > 0 or interval["high"] < 0)}


def _pooled_difference(
    comparisons: dict[str, Any], seeds: list[int], control: str, metric: str, bootstrap: dict[str, int]
) -> dict[str, Any]:
    """Each window's ``migrated - control`` averaged over the seeds, then a window bootstrap."""
    migrated = np.mean([comparisons[f"migrated/{s}"]["per_window"][metric] for s in seeds], axis=0)
    controls = np.mean([comparisons[_comparison_name(control, s)]["per_window"][metric] for s in seeds], axis=0)
    n_positions = comparisons[f"migrated/{seeds[0]}"]["per_window"]["n_positions"]
    interval = paired_difference_ci(
        migrated, controls, n_positions, n_resamples=bootstrap["n_resamples"], seed=bootstrap["seed"]
    ).to_dict()
    return {**interval, "excludes_zero": bool(interval["low"] > 0 or interval["high"] < 0)}


def _contrasts(comparisons: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    seeds, bootstrap = list(params["seeds"]), params["bootstrap"]
    per_seed = {}
    for seed in seeds:
        migrated = comparisons[f"migrated/{seed}"]
        record = {
            f"migrated_minus_{c}": _difference(migrated, comparisons[_comparison_name(c, seed)], "top5", bootstrap)
            for c in CONTROLS
        }
        record["migrated_minus_random_module_js"] = _difference(
            migrated, comparisons[f"random_module/{seed}"], "js", bootstrap
        )
        record["also_trained_minus_migrated"] = _difference(
            comparisons[f"also_trained/{seed}"], migrated, "top5", bootstrap
        )
        record["non_inferior_to_ceiling"] = non_inferiority(
            migrated["per_window"]["top5"],
            comparisons["ceiling"]["per_window"]["top5"],
            migrated["per_window"]["n_positions"],
            params["ni_margin"],
            True,
            n_resamples=bootstrap["n_resamples"],
            seed=bootstrap["seed"],
        )
        per_seed[str(seed)] = record
    pooled = {f"migrated_minus_{c}": _pooled_difference(comparisons, seeds, c, "top5", bootstrap) for c in CONTROLS}
    differences = [
        comparisons[f"migrated/{s}"]["summary"]["top5"] - comparisons[f"random_module/{s}"]["summary"]["top5"]
        for s in seeds
    ]
    pooled["migrated_minus_random_module_seed_interval"] = seed_interval(differences).to_dict()
    return {"per_seed": per_seed, "pooled": pooled}


def _beats_random_module(contrasts: dict[str, Any], seeds: list[int]) -> str:
    pooled = contrasts["pooled"]["migrated_minus_random_module"]
    every_seed = all(contrasts["per_seed"][str(s)]["migrated_minus_random_module"]["low"] > 0 for s in seeds)
    if pooled["low"] > 0:
        return "yes" if every_seed else "mixed"
    return "worse" if pooled["high"] < 0 else "no"


def _pair_verdict(passes: bool, beats: str) -> str:
    if passes and beats == "yes":
        return "reproduced"
    if passes:
        return "NIB passes, but the migrated module does not beat a random module put through the same calibration"
    if beats == "yes":
        return "not reproduced: NIB fails, though the migrated module beats the random-module control"
    return "not reproduced"


def _perplexities(block: dict[str, Any]) -> dict[str, Any]:
    return {
        "reference": perplexity_from(block["reference_nll"]),
        "source": {name: perplexity_from(nll) for name, nll in block["source_nll"].items()},
    }


def derive(result: dict[str, Any]) -> dict[str, Any]:
    """Groups (seed intervals), contrasts, perplexities and verdicts of every pair."""
    params = result["parameters"]
    seeds = list(params["seeds"])
    out: dict[str, dict[str, Any]] = {"groups": {}, "contrasts": {}, "perplexities": {}, "verdicts": {}}
    for key in result["pair_keys"]:
        comparisons = pair_comparisons(result["comparisons"], key)
        official = pair_comparisons(result["official"], key)
        out["groups"][key] = {
            arm: {
                m: seed_interval([comparisons[f"{arm}/{s}"]["summary"][m] for s in seeds]).to_dict()
                for m in GROUP_METRICS
            }
            for arm in SEEDED_ARMS
        }
        contrasts = _contrasts(comparisons, params)
        out["contrasts"][key] = contrasts
        out["perplexities"][key] = _perplexities(result["pairs"][key])
        held_out = {str(s): comparisons[f"migrated/{s}"]["verdict"] for s in seeds}
        beats = _beats_random_module(contrasts, seeds)
        out["verdicts"][key] = {
            "held_out_nib_migrated": held_out,
            "official_nib_migrated": {
                str(s): official[f"migrated/{s}"]["verdict"] for s in seeds if f"migrated/{s}" in official
            },
            "held_out_nib_by_arm": {name: c["verdict"] for name, c in comparisons.items()},
            "migrated_beats_random_module": beats,
            "claim": _pair_verdict(all(v == "PASS" for v in held_out.values()), beats),
        }
    return out


def claim_verdict(result: dict[str, Any]) -> str:
    """The claim's verdict over every pair: reproduced only when every pair reproduces it."""
    reproduced = all(result["verdicts"][key]["claim"] == "reproduced" for key in result["pair_keys"])
    return "reproduced" if reproduced else "not reproduced"


def glue_values(result: dict[str, Any]) -> dict[str, Any]:
    """Numbers the book's prose pulls in with myst-nb ``glue`` (prefix ``c2_``; pairs numbered from 1)."""
    values: dict[str, Any] = {
        "c2_minutes": round(result["resources"]["wall_s"] / 60, 1),
        "c2_profile": result["profile"],
    }
    for i, key in enumerate(result["pair_keys"], start=1):
        groups, contrast = result["groups"][key], result["contrasts"][key]["pooled"]["migrated_minus_random_module"]
        comparisons = pair_comparisons(result["comparisons"], key)
        prefix = f"c2_p{i}_"
        values.update(
            {
                f"{prefix}pair": key,
                f"{prefix}verdict": result["verdicts"][key]["claim"],
                f"{prefix}beats_random": result["verdicts"][key]["migrated_beats_random_module"],
                f"{prefix}migrated_top5": groups["migrated"]["top5"]["estimate"],
                f"{prefix}migrated_top5_low": groups["migrated"]["top5"]["low"],
                f"{prefix}migrated_top5_high": groups["migrated"]["top5"]["high"],
                f"{prefix}random_top5": groups["random_module"]["top5"]["estimate"],
                f"{prefix}contrast": contrast["estimate"],
                f"{prefix}contrast_low": contrast["low"],
                f"{prefix}contrast_high": contrast["high"],
                f"{prefix}no_module_top5": comparisons["no_module"]["summary"]["top5"],
                f"{prefix}ceiling_top5": comparisons["ceiling"]["summary"]["top5"],
                f"{prefix}migrated_ppl": groups["migrated"]["ppl"]["estimate"],
                f"{prefix}reference_ppl": result["perplexities"][key]["reference"],
            }
        )
    zoo = result.get("zoo") or {}
    if zoo:
        values.update(
            {
                "c2_t5_train_s": zoo["train_wall_s"],
                "c2_t5_device": zoo["device"],
                "c2_t5_code_ppl": round(zoo["test_perplexity"]["code"], 1),
                "c2_t5_prose_ppl": round(zoo["test_perplexity"]["prose"], 1),
            }
        )
        if "cpu_probe" in zoo:
            values["c2_t5_cpu_tokens_per_s"] = zoo["cpu_probe"]["tokens_per_s"]
            values["c2_t5_cpu_hours"] = zoo["cpu_probe"]["recipe_hours_at_this_rate"]
    return values
