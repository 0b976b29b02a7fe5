"""Claim 2's derived sections, gates and verdicts, computed from the raw per-window values of a result
file only.

The notebook's writer and the verifier both call :func:`derive` (registered as the claim's deriver),
so a summary, interval, contrast, gate or verdict in the file can never disagree with its data.

Rules fixed before any run (a *setting* is a pair ``S -> T`` in one domain):

* **Source gate** (:func:`abi.verdicts.regime_gate`): on held-out windows of S, every seed's source
  module must lower S's perplexity by at least 25 % (the gate uses the seed with the smallest
  reduction) and the bare S must FAIL the held-out NIB against every seed's source module. Otherwise
  there is no domain knowledge a migration could carry, and the setting's verdict is "not testable in
  this regime".
* **Contrasts** are paired by window (every arm is scored on the same held-out T windows): 95 %
  window-bootstrap intervals of the top-5 difference ``migrated - control`` per seed, and pooled over
  seeds (each window's difference averaged over the seeds first).
* **Migrated beats a floor** (the random module through the same Procrustes + KD; the bare target)
  when the pooled interval *and* every seed's interval lie above zero ("yes"); "mixed" when only the
  pooled one does; "worse" when the pooled interval lies below zero; otherwise "no".
* **Row verdict** of a testable setting (:func:`abi.verdicts.nib_row_verdict`): "reproduced" when the
  migrated module passes the held-out NIB against the native T module for every seed *and* beats both
  the random module and the bare target; "passes but not discriminative" when it passes for every seed
  but does not beat both; "mixed" when some seeds pass; "not reproduced" when none does.
* **Claim verdict** (:func:`abi.verdicts.combine`): the common verdict of the testable settings,
  "mixed" when they differ, "not testable in this regime" when none is testable.

Also here, because the book's prose and tables read them without loading any model: the release's
published figures (:data:`PUBLISHED`), the arms' labels and the glued values.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from abi.nib import NIB_THRESHOLDS, summary_from_per_window
from abi.results import perplexity_from
from abi.stats import non_inferiority, paired_difference_ci, seed_interval
from abi.verdicts import combine, gated, nib_row_verdict, regime_gate

SCHEMA_VERSION = 2  # 2: settings (pair x domain), source gate, KD until plateau, fair starts, row verdicts

PUBLISHED = {
    "setting": "T5-large -> GPT-2-medium (both d=1024); 1 tap, bottleneck 256; Procrustes on 2,000 shared "
    "sentences; 1,200 KD steps (0.9 KL at T=2 + 0.1 CE); anchor: a native GPT-2-medium module (500 steps)",
    "official": {"top5": 0.8699, "top1": 0.9252, "js": 0.01787, "entropy_diff": 0.2819},
    "cross_family": {"pair": "GPT-2-small -> Qwen2.5-0.5B", "top5": 0.8701},
}
ARMS = ("migrated", "random_module", "procrustes_only", "random_init_kd", "also_trained", "no_module", "ceiling")
REQUIRED_ARMS = ("migrated", "random_module", "no_module")  # the verdict's candidate and floors
ARM_LABELS = {
    "migrated": "migrated module (Procrustes + KD, domain frozen): the claim",
    "random_module": "random module, same Procrustes + KD (floor)",
    "procrustes_only": "Procrustes only, 0 KD steps",
    "random_init_kd": "random interface + KD, no Procrustes",
    "also_trained": "Procrustes + KD of every weight (original code)",
    "no_module": "no module: bare target (floor)",
    "ceiling": "second native module, other seed (ceiling)",
}
SINGLE_ARMS = ("no_module", "ceiling")
CONTROLS = ("random_module", "no_module", "procrustes_only", "random_init_kd")
FLOORS = ("random_module", "no_module")
GROUP_METRICS = ("top5", "top1", "js", "entropy_diff", "ppl")
DOMAIN_LABELS = {"python": "Python (weak regime)", "python-dialect": "Python dialect (strong regime)"}


def setting_label(result: dict[str, Any], key: str) -> str:
    """``python-dialect: S->T`` -> ``S -> T, Python dialect (strong regime)``."""
    setting = result["settings"][key]
    return f"{setting['pair']}, {DOMAIN_LABELS.get(setting['domain'], setting['domain'])}"


def _name(arm: str, seed: int) -> str:
    """``arm/seed`` for a seeded arm; the bare target and the ceiling have one comparison."""
    return arm if arm in SINGLE_ARMS else f"{arm}/{seed}"


def _interval(a: Any, b: Any, n_positions: Any, bootstrap: dict[str, int]) -> dict[str, Any]:
    interval = paired_difference_ci(
        a, b, n_positions, n_resamples=bootstrap["n_resamples"], seed=bootstrap["seed"]
    ).to_dict()
    return {**interval, "excludes_zero": bool(interval["low"] > 0 or interval["high"] < 0)}


def _contrasts(comparisons: dict[str, Any], seeds: list[int], params: dict[str, Any]) -> dict[str, Any]:
    bootstrap = params["bootstrap"]
    arms = {name.split("/")[0] for name in comparisons}
    controls = [c for c in CONTROLS if c in arms]
    n_positions = comparisons[f"migrated/{seeds[0]}"]["per_window"]["n_positions"]
    per_seed = {}
    for seed in seeds:
        migrated = comparisons[f"migrated/{seed}"]["per_window"]
        record = {
            f"migrated_minus_{c}": _interval(
                migrated["top5"], comparisons[_name(c, seed)]["per_window"]["top5"], n_positions, bootstrap
            )
            for c in controls
        }
        if "ceiling" in arms:
            record["non_inferior_to_ceiling"] = non_inferiority(
                migrated["top5"],
                comparisons["ceiling"]["per_window"]["top5"],
                n_positions,
                params["ni_margin"],
                True,
                n_resamples=bootstrap["n_resamples"],
                seed=bootstrap["seed"],
            )
        per_seed[str(seed)] = record
    pooled = {}
    for c in controls:
        migrated = np.mean([comparisons[f"migrated/{s}"]["per_window"]["top5"] for s in seeds], axis=0)
        control = np.mean([comparisons[_name(c, s)]["per_window"]["top5"] for s in seeds], axis=0)
        pooled[f"migrated_minus_{c}"] = _interval(migrated, control, n_positions, bootstrap)
    return {"per_seed": per_seed, "pooled": pooled}


def _beats(contrasts: dict[str, Any], seeds: list[int], floor: str) -> str:
    pooled = contrasts["pooled"][f"migrated_minus_{floor}"]
    every_seed = all(contrasts["per_seed"][str(s)][f"migrated_minus_{floor}"]["low"] > 0 for s in seeds)
    if pooled["low"] > 0:
        return "yes" if every_seed else "mixed"
    return "worse" if pooled["high"] < 0 else "no"


def _source_gate(raw: dict[str, Any]) -> dict[str, Any]:
    """The regime gate from each seed's source-module NLL and bare-source NIB (raw values)."""
    per_seed = {}
    for seed, record in raw.items():
        bare = record["bare"]
        verdict = NIB_THRESHOLDS.verdict(summary_from_per_window(bare["per_window"]))
        per_seed[seed] = regime_gate(perplexity_from(record["module_nll"]), perplexity_from(bare["nll"]), verdict)
    weakest = min(per_seed, key=lambda s: per_seed[s]["module_ppl_reduction"])
    every_fails = all(g["bare_backbone_nib"] == "FAIL" for g in per_seed.values())
    bare_ppl = perplexity_from(raw[weakest]["bare"]["nll"])
    module_ppl = perplexity_from(raw[weakest]["module_nll"])
    gate = regime_gate(module_ppl, bare_ppl, "FAIL" if every_fails else "PASS")
    return {**gate, "source_ppl": {"bare": bare_ppl, "module": module_ppl}, "per_seed": per_seed}


def _kd_starts(training: dict[str, Any]) -> dict[str, Any]:
    """Per KD run: the KD validation loss (and KL) at step 0 and at its best step, the training KD loss
    at step 0, the steps run and the step kept (the plateau rule's)."""
    out = {}
    for name, log in training["kd"].items():
        evaluations = log["evaluations"]
        best = next(e for e in evaluations if e["step"] == log["best_step"])
        out[name] = {
            "val_loss_step0": evaluations[0]["val_loss"],
            "val_kl_step0": evaluations[0]["val_kl"],
            "val_loss_best": best["val_loss"],
            "val_kl_best": best["val_kl"],
            "train_loss_step0": log["losses"][0],
            "steps_run": log["steps_run"],
            "best_step": log["best_step"],
        }
    return out


def _setting_stats(setting: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    comparisons, seeds = setting["comparisons"], list(setting["seeds"])
    seeded = [a for a in ARMS if a not in SINGLE_ARMS and f"{a}/{seeds[0]}" in comparisons]
    contrasts = _contrasts(comparisons, seeds, params)
    migrated = {str(s): comparisons[f"migrated/{s}"]["verdict"] for s in seeds}
    return {
        "groups": {
            arm: {
                m: seed_interval([comparisons[f"{arm}/{s}"]["summary"][m] for s in seeds]).to_dict()
                for m in GROUP_METRICS
            }
            for arm in seeded
        },
        "contrasts": contrasts,
        "reference_ppl": perplexity_from(setting["reference_nll"]),
        "kd_starts": _kd_starts(setting["training"]),
        "verdicts": {
            "held_out_nib_migrated": migrated,
            "official_nib_migrated": {
                str(s): setting["official"][f"migrated/{s}"]["verdict"]
                for s in seeds
                if f"migrated/{s}" in setting["official"]
            },
            "held_out_nib_by_arm": {name: c["verdict"] for name, c in comparisons.items()},
            **{f"migrated_beats_{floor}": _beats(contrasts, seeds, floor) for floor in FLOORS},
        },
    }


def _row_verdict(stats: dict[str, Any], gate: dict[str, Any]) -> str:
    verdicts = stats["verdicts"]
    held_out = verdicts["held_out_nib_migrated"]
    n_pass = sum(v == "PASS" for v in held_out.values())
    beats = all(verdicts[f"migrated_beats_{floor}"] == "yes" for floor in FLOORS)
    return gated(gate, nib_row_verdict(n_pass, len(held_out), beats))


def derive(result: dict[str, Any]) -> dict[str, Any]:
    """Per setting: groups (seed intervals), contrasts, KD starts, the source gate and the row verdict;
    and the claim's verdict."""
    params, settings = result["parameters"], result["settings"]
    stats = {key: _setting_stats(setting, params) for key, setting in settings.items()}
    gates = {key: _source_gate(setting["source_gate_raw"]) for key, setting in settings.items()}
    rows = {key: _row_verdict(stats[key], gates[key]) for key in settings}
    return {"setting_stats": stats, "regime_gates": gates, "row_verdicts": rows, "verdict": combine(rows.values())}


def claim_verdict(result: dict[str, Any]) -> str:
    """The stored verdict (computed once by :func:`derive`, checked by the verifier)."""
    return result["verdict"]


def glue_key(key: str) -> str:
    """A setting's name as part of a glue key: ``python-dialect: a->b`` -> ``python_dialect_a_to_b``."""
    return re.sub(r"[^0-9a-z]+", "_", key.lower().replace("->", " to ")).strip("_")


def glue_values(result: dict[str, Any]) -> dict[str, Any]:
    """Numbers the book's prose pulls in with myst-nb ``glue`` (prefix ``c2_``)."""
    values: dict[str, Any] = {
        "c2_verdict": result["verdict"],
        "c2_profile": result["profile"],
        "c2_minutes": round(sum(sum(t.values()) for t in result["timings"].values()) / 60, 1),
    }
    for key in result["settings"]:
        stats, gate, prefix = result["setting_stats"][key], result["regime_gates"][key], f"c2_{glue_key(key)}_"
        comparisons = result["settings"][key]["comparisons"]
        migrated, contrast = stats["groups"]["migrated"]["top5"], stats["contrasts"]["pooled"]
        values.update(
            {
                f"{prefix}verdict": result["row_verdicts"][key],
                f"{prefix}source_ppl_reduction": gate["module_ppl_reduction"],
                f"{prefix}source_bare_nib": gate["bare_backbone_nib"],
                f"{prefix}testable": gate["testable"],
                f"{prefix}migrated_top5": migrated["estimate"],
                f"{prefix}migrated_top5_low": migrated["low"],
                f"{prefix}migrated_top5_high": migrated["high"],
                f"{prefix}random_top5": stats["groups"]["random_module"]["top5"]["estimate"],
                f"{prefix}contrast_random": contrast["migrated_minus_random_module"]["estimate"],
                f"{prefix}contrast_random_low": contrast["migrated_minus_random_module"]["low"],
                f"{prefix}contrast_random_high": contrast["migrated_minus_random_module"]["high"],
                f"{prefix}no_module_top5": comparisons["no_module"]["summary"]["top5"],
                f"{prefix}reference_ppl": stats["reference_ppl"],
            }
        )
        if "ceiling" in comparisons:
            values[f"{prefix}ceiling_top5"] = comparisons["ceiling"]["summary"]["top5"]
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
