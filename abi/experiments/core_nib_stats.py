"""Derived sections, verdict and glued numbers of claim 1's result file, from its stored raw values only.

The notebook's writer and the verifier both call :func:`derive`, so a stored interval, contrast or
verdict that does not follow from the raw per-window values fails verification. The chapter, its
glued numbers and the summary all take the claim's verdict from :func:`claim_verdict`.
"""

from __future__ import annotations

from typing import Any

from abi.stats import non_inferiority, paired_difference_ci, seed_interval

# What the release published for claim 1 (T5-large, official protocol).
PUBLISHED = {
    "setting": "T5-large, anchor 1 tap (24) bottleneck 512; candidate taps 19-24, bottleneck 4096; "
    "16,000 corrMSE steps",
    "official": {"top5": 0.8725, "top1": 0.8508, "js": 0.01391, "entropy_diff": 0.2256},
    "extended_top5": {"estimate": 0.8549, "low": 0.8425, "high": 0.8673},
}
SEEDED_GROUPS = ("candidate", "uncalibrated", "random_calibrated")
FLOORS = ("no_module", "uncalibrated", "random_calibrated")
GROUP_METRICS = ("top5", "top1", "js", "entropy_diff", "ppl")


def _group_intervals(comparisons: dict[str, dict], group: str) -> dict[str, Any]:
    """Mean over training seeds of each metric of one seeded arm, with its Student-t interval."""
    members = [comparison for name, comparison in comparisons.items() if name.split("/")[0] == group]
    return {metric: seed_interval([member["summary"][metric] for member in members]).to_dict()
            for metric in GROUP_METRICS}


def _contrasts(comparisons: dict[str, dict], seeds: list[int], params: dict[str, Any]) -> dict[str, Any]:
    """Candidate vs ceiling (non-inferiority, fixed margin) and vs each floor (must beat it), per seed."""
    bootstrap = params["bootstrap"]
    ceiling = comparisons["ceiling"]["per_window"]
    out: dict[str, Any] = {}
    for seed in seeds:
        candidate = comparisons[f"candidate/{seed}"]["per_window"]
        n_positions = candidate["n_positions"]
        record = {"non_inferior_to_ceiling": non_inferiority(
            candidate["top5"], ceiling["top5"], n_positions, params["ni_margin"], higher_is_better=True,
            n_resamples=bootstrap["n_resamples"], seed=bootstrap["seed"])}
        for floor in FLOORS:
            key = floor if floor == "no_module" else f"{floor}/{seed}"
            difference = paired_difference_ci(candidate["top5"], comparisons[key]["per_window"]["top5"], n_positions,
                                              one_sided=True, n_resamples=bootstrap["n_resamples"],
                                              seed=bootstrap["seed"])
            record[f"beats_{floor}"] = {**difference.to_dict(), "beats": bool(difference.low > 0)}
        out[str(seed)] = record
    return out


def derive(result: dict[str, Any]) -> dict[str, Any]:
    """Sections computed from the comparisons alone; the verifier recomputes them the same way."""
    params, comparisons, official = result["parameters"], result["comparisons"], result["official"]
    seeds = list(params["candidate_seeds"])
    return {
        "groups": {group: _group_intervals(comparisons, group) for group in SEEDED_GROUPS},
        "contrasts": _contrasts(comparisons, seeds, params),
        "verdicts": {
            "official_pass_per_seed": {str(s): official[f"candidate/{s}"]["verdict"] for s in seeds},
            "held_out_pass_per_seed": {str(s): comparisons[f"candidate/{s}"]["verdict"] for s in seeds},
        },
    }


def claim_verdict(result: dict[str, Any]) -> str:
    """reproduced / not reproduced, by rules fixed before the run (see the chapter text): the held-out NIB
    passes for every candidate seed, and every seed's candidate beats every floor."""
    seeds = [str(s) for s in result["parameters"]["candidate_seeds"]]
    held_out_passes = all(result["verdicts"]["held_out_pass_per_seed"][s] == "PASS" for s in seeds)
    beats_floors = all(result["contrasts"][s][f"beats_{floor}"]["beats"] for s in seeds for floor in FLOORS)
    if held_out_passes and beats_floors:
        return "reproduced"
    if held_out_passes:
        return "passes, but not above every floor"
    return "not reproduced"


def glue_values(result: dict[str, Any]) -> dict[str, Any]:
    """Numbers the book's prose pulls in with myst-nb ``glue`` (never typed by hand)."""
    top5 = result["groups"]["candidate"]["top5"]
    return {
        "c1_verdict": claim_verdict(result),
        "c1_top5": top5["estimate"],
        "c1_top5_low": top5["low"],
        "c1_top5_high": top5["high"],
        "c1_ceiling_top5": result["comparisons"]["ceiling"]["summary"]["top5"],
        "c1_random_top5": result["groups"]["random_calibrated"]["top5"]["estimate"],
        "c1_backbone": result["backbone"]["name"],
        "c1_minutes": round(sum(result["timings"].values()) / 60, 1),
    }
