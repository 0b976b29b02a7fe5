"""Claim 2, evaluation: the source gate on the source model, every arm scored against the native target
module on the same held-out windows, and one setting's raw result block (per-window values only;
:mod:`cross_architecture_stats` derives everything else from them).
"""

from __future__ import annotations

from typing import Any

import torch

from abi.backbones import Backbone
from abi.evaluate import VariantScores, score_variants
from abi.experiments.cross_architecture_arms import SettingArms
from abi.experiments.cross_architecture_setup import SettingSetup, parse_setting
from abi.experiments.cross_architecture_stats import ARMS
from abi.features import FeatureSet
from abi.results import comparison_record, fingerprint_after

REFERENCE = "native target module"
SOURCE_REFERENCE = "source module on its own model"


def arm_variants(arms: SettingArms, names: list[str] | tuple[str, ...] = ARMS) -> dict[str, torch.nn.Module | None]:
    """Scored variants by name (``arm/seed`` for seeded arms), in the order of ``ARMS``."""
    variants: dict[str, torch.nn.Module | None] = {}
    for arm in names:
        if arm == "no_module":
            variants[arm] = None
        elif arm == "ceiling":
            variants[arm] = arms.ceiling
        else:
            variants.update({k: m for k, m in arms.arms.items() if k.split("/")[0] == arm})
    return variants


def scoring_batch_windows(backbone: Backbone, features: FeatureSet, logit_elements: int = 2**26) -> int:
    """Windows per scoring batch so that one batch's logits stay near 256 MiB (float32): two of them
    (reference and variant) live at once, and Gemma's 512-token windows are 134M logits each."""
    return max(1, min(8, logit_elements // (features.windows.seq_len * backbone.vocab_size)))


def nll_record(scores: VariantScores) -> dict[str, list]:
    """Per-window summed NLL and token counts, as a result file stores them."""
    return {"sum": list(scores.nll_sum), "n_tokens": list(scores.n_tokens)}


def source_gate_scores(setup: SettingSetup, arms: SettingArms) -> dict[str, Any]:
    """Per seed, on held-out source windows: the source module's NLL and the bare source model's NIB
    against that module (the raw values of the regime gate)."""
    features, bootstrap = setup.features["source_eval"], setup.params["bootstrap"]
    out = {}
    for seed, module in arms.sources.items():
        module_scores, bare = score_variants(
            setup.source,
            features,
            module,
            {"no_module": None},
            setup.source_skip,
            scoring_batch_windows(setup.source, features),
            desc=f"{setup.key}: source gate {seed}",
        )
        out[str(seed)] = {
            "module_nll": nll_record(module_scores),
            "bare": comparison_record(bare["no_module"], bootstrap, SOURCE_REFERENCE),
        }
    return out


def evaluate_setting(setup: SettingSetup, arms: SettingArms) -> dict[str, Any]:
    """Held-out NIB of every arm vs the native reference; the official protocol for ``official_arms``;
    the source gate on the source model."""
    params, target = setup.params, setup.target
    with setup.watch.time("evaluation"):
        held_out = setup.features["target_eval"]
        scored = {
            "held_out": score_variants(
                target,
                held_out,
                arms.reference,
                arm_variants(arms, params["arms"]),
                setup.target_skip,
                scoring_batch_windows(target, held_out),
                desc=f"{setup.key}: held-out",
            ),
            "source_gate": source_gate_scores(setup, arms),
        }
        if "target_official" in setup.features:
            official = setup.features["target_official"]
            scored["official"] = score_variants(
                target,
                official,
                arms.reference,
                arm_variants(arms, params["official_arms"]),
                setup.target_skip,
                scoring_batch_windows(target, official),
                desc=f"{setup.key}: official",
            )
    return scored


def _model_record(setup: SettingSetup, side: str) -> dict[str, Any]:
    backbone = setup.source if side == "source" else setup.target
    streams = setup.source_streams if side == "source" else setup.target_streams
    return {
        **backbone.describe(),
        "taps": list(setup.source_taps if side == "source" else setup.target_taps),
        "fingerprint_before": setup.fingerprints_before[side],
        "fingerprint_after": fingerprint_after(backbone, setup.fingerprints_before[side]),
        "data": streams.identity,
    }


def setting_block(setup: SettingSetup, arms: SettingArms, scored: dict[str, Any]) -> dict[str, Any]:
    """One setting's raw record for the result file; refuses the run if either backbone's weights changed."""
    bootstrap = setup.params["bootstrap"]
    domain, source, target = parse_setting(setup.key)
    reference_held_out, held_out = scored["held_out"]
    official = scored["official"][1] if "official" in scored else {}
    return {
        "domain": domain,
        "pair": f"{source} -> {target}",
        "correction_site": setup.target.correction_site,
        "seeds": list(setup.params["seeds"]),
        "source": _model_record(setup, "source"),
        "target": _model_record(setup, "target"),
        "sentences": setup.sentences,
        "reference_nll": nll_record(reference_held_out),
        "source_gate_raw": scored["source_gate"],
        "comparisons": {name: comparison_record(s, bootstrap, REFERENCE) for name, s in held_out.items()},
        "official": {name: comparison_record(s, bootstrap, REFERENCE) for name, s in official.items()},
        "training": arms.records,
        "timings": setup.watch.timings,
    }
