"""Derived sections, gates, verdicts and glued numbers of claim 1's result file, from its stored raw values only.

The notebook's writer and the verifier both call :func:`derive`, so a stored interval, contrast, regime
gate or verdict that does not follow from the raw per-window values fails verification. Chapters and the
summary only read the stored ``verdict`` and ``row_verdicts``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from abi.nib import NIB_THRESHOLDS, summary_from_per_window
from abi.results import perplexity_from
from abi.sites import DEFAULT_CORRECTION_SITE
from abi.stats import non_inferiority, paired_difference_ci, seed_interval
from abi.verdicts import combine, gated, nib_row_verdict, regime_gate

SCHEMA_VERSION = 2  # 2: settings (domain x correction site), regime gates, effect positions, dose-response

# What the release published for claim 1 (T5-large, official protocol).
PUBLISHED = {
    "setting": "T5-large, anchor 1 tap (24) bottleneck 512; candidate taps 19-24, bottleneck 4096; "
    "16,000 corrMSE steps",
    "official": {"top5": 0.8725, "top1": 0.8508, "js": 0.01391, "entropy_diff": 0.2256},
    "extended_top5": {"estimate": 0.8549, "low": 0.8425, "high": 0.8673},
}
RELEASE_SITE = DEFAULT_CORRECTION_SITE
SEEDED_GROUPS = ("candidate", "uncalibrated", "random_calibrated")
FLOORS = ("no_module", "uncalibrated", "random_calibrated")
GROUP_METRICS = ("top5", "top1", "js", "entropy_diff", "ppl")
DOSE_ARMS = ("trained", "untrained")


def _group_intervals(comparisons: dict[str, dict], group: str) -> dict[str, Any]:
    """Mean over training seeds of each metric of one seeded arm, with its Student-t interval."""
    members = [comparison for name, comparison in comparisons.items() if name.split("/")[0] == group]
    return {
        metric: seed_interval([member["summary"][metric] for member in members]).to_dict() for metric in GROUP_METRICS
    }


def _contrasts(comparisons: dict[str, dict], seeds: list[int], params: dict[str, Any]) -> dict[str, Any]:
    """Candidate vs ceiling (non-inferiority, fixed margin) and vs each floor (must beat it), per seed."""
    bootstrap = params["bootstrap"]
    ceiling = comparisons["ceiling"]["per_window"]
    out: dict[str, Any] = {}
    for seed in seeds:
        candidate = comparisons[f"candidate/{seed}"]["per_window"]
        n_positions = candidate["n_positions"]
        record = {
            "non_inferior_to_ceiling": non_inferiority(
                candidate["top5"],
                ceiling["top5"],
                n_positions,
                params["ni_margin"],
                higher_is_better=True,
                n_resamples=bootstrap["n_resamples"],
                seed=bootstrap["seed"],
            )
        }
        for floor in FLOORS:
            key = floor if floor == "no_module" else f"{floor}/{seed}"
            difference = paired_difference_ci(
                candidate["top5"],
                comparisons[key]["per_window"]["top5"],
                n_positions,
                one_sided=True,
                n_resamples=bootstrap["n_resamples"],
                seed=bootstrap["seed"],
            )
            record[f"beats_{floor}"] = {**difference.to_dict(), "beats": bool(difference.low > 0)}
        out[str(seed)] = record
    return out


def _effect_nib(comparisons: dict[str, dict]) -> dict[str, Any]:
    """NIB of every arm on the effect positions (the anchor's top-1 differs from the bare backbone's)."""
    out = {}
    for name, comparison in comparisons.items():
        per_window = comparison["effect_per_window"]
        n_effect = int(np.sum(per_window["n_positions"]))
        n_all = int(np.sum(comparison["per_window"]["n_positions"]))
        record: dict[str, Any] = {"n_positions": n_effect, "fraction_of_positions": n_effect / n_all}
        if n_effect:
            summary = summary_from_per_window(per_window)
            record.update(summary=summary, verdict=NIB_THRESHOLDS.verdict(summary))
        out[name] = record
    return out


def _dose_response(dose: dict[str, dict], doses: list[int], seeds: list[int]) -> dict[str, Any]:
    """Per dose: the trained and the untrained module's top-5 with the anchor (seed interval), their
    per-seed difference, and the uncalibrated candidate's top-5 on the same windows."""
    if not dose:
        return {}
    out: dict[str, Any] = {
        "uncalibrated_top5": seed_interval([dose[f"uncalibrated/{s}"]["summary"]["top5"] for s in seeds]).to_dict(),
        "doses": {},
    }
    for d in doses:
        top5 = {arm: [dose[f"{arm}/{d}/{s}"]["summary"]["top5"] for s in seeds] for arm in DOSE_ARMS}
        out["doses"][str(d)] = {
            **{arm: seed_interval(values).to_dict() for arm, values in top5.items()},
            "trained_minus_untrained": seed_interval(np.subtract(top5["trained"], top5["untrained"])).to_dict(),
            "verdicts": {arm: [dose[f"{arm}/{d}/{s}"]["verdict"] for s in seeds] for arm in DOSE_ARMS},
        }
    return out


def _setting_stats(setting: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    comparisons, official = setting["comparisons"], setting["official"]
    seeds = list(setting["candidate_seeds"])
    return {
        "anchor_ppl": {split: perplexity_from(nll) for split, nll in setting["anchor_nll"].items()},
        "groups": {group: _group_intervals(comparisons, group) for group in SEEDED_GROUPS},
        "contrasts": _contrasts(comparisons, seeds, params),
        "verdicts": {
            "official_pass_per_seed": {str(s): official[f"candidate/{s}"]["verdict"] for s in seeds},
            "held_out_pass_per_seed": {str(s): comparisons[f"candidate/{s}"]["verdict"] for s in seeds},
        },
        "effect_nib": _effect_nib(comparisons),
        "dose_response": _dose_response(setting["dose_response"], list(params["dose_windows"]), seeds),
    }


def _gate(setting: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """Testable when the anchor lowers held-out perplexity by >= 25 % and the bare backbone fails the
    held-out NIB against the anchor."""
    no_module = setting["comparisons"]["no_module"]
    return regime_gate(stats["anchor_ppl"]["held_out"], no_module["summary"]["ppl"], no_module["verdict"])


def _row_verdict(stats: dict[str, Any], gate: dict[str, Any]) -> str:
    seeds = list(stats["verdicts"]["held_out_pass_per_seed"])
    n_pass = sum(stats["verdicts"]["held_out_pass_per_seed"][s] == "PASS" for s in seeds)
    beats = all(stats["contrasts"][s][f"beats_{floor}"]["beats"] for s in seeds for floor in FLOORS)
    return gated(gate, nib_row_verdict(n_pass, len(seeds), beats))


def derive(result: dict[str, Any]) -> dict[str, Any]:
    """Sections computed from the stored raw values alone; the verifier recomputes them the same way.

    One row per setting; the claim's verdict combines the rows at the release's correction site (the
    pre-norm site is a deviation the chapter reports beside them, not evidence for the release's claim).
    """
    params, settings = result["parameters"], result["settings"]
    stats = {name: _setting_stats(setting, params) for name, setting in settings.items()}
    gates = {name: _gate(settings[name], stats[name]) for name in settings}
    rows = {name: _row_verdict(stats[name], gates[name]) for name in settings}
    release_rows = [rows[name] for name in settings if settings[name]["correction_site"] == RELEASE_SITE]
    return {"setting_stats": stats, "regime_gates": gates, "row_verdicts": rows, "verdict": combine(release_rows)}


def setting_view(result: dict[str, Any], setting: str) -> dict[str, Any]:
    """One setting as a flat document (header, raw values and derived stats side by side) for reports."""
    if setting not in result["settings"]:
        raise KeyError(f"no setting {setting!r} in the result; settings: {', '.join(result['settings'])}.")
    return {
        **{k: v for k, v in result.items() if k not in ("settings", "setting_stats")},
        **result["settings"][setting],
        **result["setting_stats"][setting],
        "setting": setting,
        "gate": result["regime_gates"][setting],
        "row_verdict": result["row_verdicts"][setting],
    }


def claim_verdict(result: dict[str, Any]) -> str:
    """The stored verdict (computed once by :func:`derive`, checked by the verifier)."""
    return result["verdict"]


def _glue_key(setting: str) -> str:
    return setting.replace("-", "_").replace("@", "_at_")


def glue_values(result: dict[str, Any]) -> dict[str, Any]:
    """Numbers the book's prose pulls in with myst-nb ``glue`` (never typed by hand)."""
    values: dict[str, Any] = {
        "c1_verdict": result["verdict"],
        "c1_backbone": result["backbone"]["name"],
        "c1_minutes": round(sum(sum(t.values()) for t in result["timings"].values()) / 60, 1),
    }
    for name in result["settings"]:
        view, key = setting_view(result, name), _glue_key(name)
        top5 = view["groups"]["candidate"]["top5"]
        values.update(
            {
                f"c1_{key}_verdict": view["row_verdict"],
                f"c1_{key}_ppl_reduction": view["gate"]["module_ppl_reduction"],
                f"c1_{key}_bare_nib": view["gate"]["bare_backbone_nib"],
                f"c1_{key}_top5": top5["estimate"],
                f"c1_{key}_top5_low": top5["low"],
                f"c1_{key}_top5_high": top5["high"],
                f"c1_{key}_ceiling_top5": view["comparisons"]["ceiling"]["summary"]["top5"],
                f"c1_{key}_random_top5": view["groups"]["random_calibrated"]["top5"]["estimate"],
                f"c1_{key}_no_module_top5": view["comparisons"]["no_module"]["summary"]["top5"],
            }
        )
    return values
