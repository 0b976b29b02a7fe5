"""Claim 2, evaluation: every arm scored against the native target module on the same held-out
windows, and one pair's raw result block (per-window values only; :mod:`cross_architecture_stats`
derives everything else from them).
"""

from __future__ import annotations

from typing import Any

import torch

from abi.backbones import Backbone
from abi.evaluate import VariantScores, score_variants
from abi.experiments.cross_architecture_arms import PairArms
from abi.experiments.cross_architecture_setup import PairSetup
from abi.experiments.cross_architecture_stats import ARMS
from abi.features import FeatureSet
from abi.nib import get_protocol
from abi.results import comparison_record, fingerprint_after

REFERENCE = "native target module"
PairBlock = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]


def arm_variants(arms: PairArms, names: list[str] | tuple[str, ...] = ARMS) -> dict[str, torch.nn.Module | None]:
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


def evaluate_pair(setup: PairSetup, arms: PairArms) -> dict[str, Any]:
    """Held-out NIB of every arm vs the native reference; the official protocol for ``official_arms``;
    the source modules' perplexity on held-out S windows (did they learn the domain on S?)."""
    params = setup.params
    skip = get_protocol(params["protocol"]).skip
    with setup.watch.time("evaluation"):
        scored = {
            "held_out": score_variants(
                setup.target,
                setup.target_eval,
                arms.reference,
                arm_variants(arms),
                skip,
                scoring_batch_windows(setup.target, setup.target_eval),
                desc=f"{setup.key} held-out",
            )
        }
        if setup.target_official is not None:
            scored["official"] = score_variants(
                setup.target,
                setup.target_official,
                arms.reference,
                arm_variants(arms, params["official_arms"]),
                skip,
                scoring_batch_windows(setup.target, setup.target_official),
                desc=f"{setup.key} official",
            )
        source_variants = {f"module/{s}": m for s, m in arms.sources.items()}
        scored["source"] = score_variants(
            setup.source,
            setup.source_eval,
            None,
            source_variants,
            0,
            scoring_batch_windows(setup.source, setup.source_eval),
            desc=f"{setup.key} source",
        )
    return scored


def nll_record(scores: VariantScores) -> dict[str, list]:
    """Per-window summed NLL and token counts, as a result file stores them."""
    return {"sum": list(scores.nll_sum), "n_tokens": list(scores.n_tokens)}


def pair_block(setup: PairSetup, arms: PairArms, scored: dict[str, Any]) -> PairBlock:
    """``(comparisons, official, block)`` of one pair, comparisons keyed ``pair/arm[/seed]``; refuses
    the run if either backbone's weights changed."""
    bootstrap = setup.params["bootstrap"]
    after = {
        "source": fingerprint_after(setup.source, setup.fingerprints_before["source"]),
        "target": fingerprint_after(setup.target, setup.fingerprints_before["target"]),
    }
    reference_held_out, held_out = scored["held_out"]
    comparisons = {f"{setup.key}/{name}": comparison_record(s, bootstrap, REFERENCE) for name, s in held_out.items()}
    official = {}
    if "official" in scored:
        official = {
            f"{setup.key}/{name}": comparison_record(s, bootstrap, REFERENCE)
            for name, s in scored["official"][1].items()
        }
    source_bare, source_modules = scored["source"]
    block = {
        "source": {
            **setup.source.describe(),
            "taps": list(setup.source_taps),
            "fingerprint_before": setup.fingerprints_before["source"],
            "fingerprint_after": after["source"],
            "data": setup.source_streams.identity,
        },
        "target": {
            **setup.target.describe(),
            "taps": list(setup.target_taps),
            "fingerprint_before": setup.fingerprints_before["target"],
            "fingerprint_after": after["target"],
            "data": setup.target_streams.identity,
        },
        "sentences": setup.sentences,
        "reference_nll": nll_record(reference_held_out),
        "source_nll": {"bare": nll_record(source_bare), **{k: nll_record(v) for k, v in source_modules.items()}},
        "training": arms.records,
        "timings": setup.watch.timings,
    }
    return comparisons, official, block
