"""Claim 1, core NIB: two independently initialised modules on one frozen backbone agree after
the candidate is calibrated to the anchor's corrections (corrMSE).

Arms, all scored against the anchor on the same held-out windows:

* ``candidate``: multi-tap module with per-tap LN, own domain stage, then corrMSE calibration
  (one per training seed) — the claim;
* ``uncalibrated``: the same candidates before calibration (floor);
* ``random_calibrated``: an untrained module of the candidate's shape put through the identical
  calibration (floor: what calibration alone achieves);
* ``no_module``: the bare backbone (floor);
* ``ceiling``: a second anchor trained identically with another seed (seed-noise ceiling).

The notebook calls :func:`validate`, :func:`prepare`, :func:`train_arms`, :func:`evaluate_arms`
and :func:`build_result` in turn; this file holds the algorithm, the notebook the narrative.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from abi.backbones import Backbone, load_backbone, resolve_backbone
from abi.evaluate import VariantScores, score_variants
from abi.experiments.common import (
    CorpusStreams,
    TappedModule,
    check_protocol_fits,
    load_streams,
    make_windows,
    spread_starts,
    training_windows,
    window_span,
)
from abi.features import FeatureSet, extract_features
from abi.module import ABIModule, ModuleConfig, count_parameters
from abi.nib import get_protocol, tail_summary
from abi.profiles import register_profiles, resolve_parameters
from abi.results import Stopwatch, derive_comparison, provenance, register_deriver
from abi.schedule import PhaseSchedule
from abi.stats import design_effect, naive_token_ci, non_inferiority, paired_difference_ci, seed_interval
from abi.train import calibrate, module_corrections, train_domain_stage

CLAIM = "core_nib"
PUBLISHED = {
    "setting": "T5-large, anchor 1 tap (24) bottleneck 512; candidate taps 19-24, bottleneck 4096; "
    "16,000 corrMSE steps",
    "official": {"top5": 0.8725, "top1": 0.8508, "js": 0.01391, "entropy_diff": 0.2256},
    "extended_top5": {"estimate": 0.8549, "low": 0.8425, "high": 0.8673},
}

# Profiles: plain values a notebook's parameters cell may override (None = the profile's value).
_CPU: dict[str, Any] = {
    "backbone": "smollm2-135m",
    "anchor_taps": [30],
    "anchor_bottleneck": 256,
    "anchor_per_tap_norm": False,
    "candidate_taps": [25, 26, 27, 28, 29, 30],
    "candidate_bottleneck": 512,
    "expansion": 4,
    "split_level": "file",
    "eval_split": "test",
    "window_len": 128,
    "n_train_windows": 256,
    "domain_steps": 80,
    "domain_lr": 3e-4,
    "domain_batch_windows": 4,
    "calibration_steps": 400,
    "calibration_lr": 5e-3,
    "calibration_batch_windows": 8,
    "anchor_seed": 0,
    "ceiling_seed": 100,
    "candidate_seeds": [1, 2, 3],
    "protocol": "faq",
    "stat_windows": 128,
    "stat_window_len": 128,
    "curve_every": 50,
    "curve_windows": 8,
    "ni_margin": 0.02,
    "bootstrap_resamples": 2000,
    "feature_dtype": "float32",
}

register_profiles(
    CLAIM,
    {
        "cpu": _CPU,
        "smoke": {
            **_CPU,
            "backbone": "tiny-llama",
            "anchor_taps": [4],
            "anchor_bottleneck": 32,
            "candidate_taps": [3, 4],
            "candidate_bottleneck": 64,
            "window_len": 64,
            "n_train_windows": 32,
            "domain_steps": 10,
            "calibration_steps": 40,
            "candidate_seeds": [1, 2],
            "stat_windows": 16,
            "stat_window_len": 64,
            "curve_every": 10,
            "curve_windows": 4,
            "bootstrap_resamples": 500,
        },
        "paper": {
            **_CPU,
            "backbone": "t5-large",
            "anchor_taps": [24],
            "anchor_bottleneck": 512,
            "candidate_taps": [19, 20, 21, 22, 23, 24],
            "candidate_bottleneck": 4096,
            "n_train_windows": 4000,
            "domain_steps": 2000,
            "domain_batch_windows": 2,
            "calibration_steps": 16000,
            "calibration_batch_windows": 8,
            "protocol": "t5-prefix",
            "stat_windows": 500,
            "curve_every": 500,
            "curve_windows": 32,
        },
    },
)


def validate(profile: str, **overrides: Any) -> dict[str, Any]:
    """Resolve and check every parameter before any long work (model names, protocol, splits)."""
    params = resolve_parameters(CLAIM, profile, **overrides)
    resolve_backbone(params["backbone"])
    get_protocol(params["protocol"])
    if params["eval_split"] not in ("test", "validation", "train"):
        raise ValueError(f"eval_split must be 'test', 'validation' or 'train', got {params['eval_split']!r}.")
    if not params["candidate_seeds"]:
        raise ValueError("candidate_seeds must list at least one training seed.")
    if params["calibration_steps"] < 4:
        raise ValueError("calibration_steps must be at least 4 (the four LR phases of the seed's schedule).")
    params["bootstrap"] = {"n_resamples": params["bootstrap_resamples"], "seed": 0}
    return params


@dataclass
class Setup:
    """Everything prepared once: backbone, streams, windows and their cached features."""

    params: dict[str, Any]
    backbone: Backbone
    streams: CorpusStreams
    feature_taps: tuple[int, ...]
    train: FeatureSet
    curve: FeatureSet
    held_out: FeatureSet
    official: FeatureSet
    fingerprint_before: str
    watch: Stopwatch = field(default_factory=Stopwatch)


def prepare(params: dict[str, Any]) -> Setup:
    """Load the backbone, check taps, tokenize the corpus, cut windows, cache tap features."""
    watch = Stopwatch()
    with watch.time("load_backbone"):
        backbone = load_backbone(params["backbone"])
    anchor_taps = backbone.check_taps(params["anchor_taps"])
    candidate_taps = backbone.check_taps(params["candidate_taps"])
    protocol = get_protocol(params["protocol"])
    check_protocol_fits(backbone, protocol)
    fingerprint_before = backbone.fingerprint(recompute=True)
    with watch.time("tokenize_corpus"):
        streams = load_streams(backbone, params["split_level"])
    eval_stream = streams.streams[params["eval_split"]]
    span_stat = window_span(backbone, protocol, params["stat_window_len"])
    stat_starts = spread_starts(len(eval_stream), span_stat, params["stat_windows"], protocol.seed)
    official_starts = protocol.draw_starts(len(eval_stream))
    curve_stream = streams.streams["validation"]
    curve_starts = spread_starts(len(curve_stream), span_stat, params["curve_windows"], protocol.seed + 1)
    feature_taps = tuple(sorted(set(anchor_taps) | set(candidate_taps)))
    windows = {
        "train": training_windows(backbone, streams, protocol, params["window_len"], params["n_train_windows"]),
        "curve": make_windows(backbone, curve_stream, curve_starts, protocol, params["stat_window_len"]),
        "held_out": make_windows(backbone, eval_stream, stat_starts, protocol, params["stat_window_len"]),
        "official": make_windows(backbone, eval_stream, official_starts, protocol, protocol.window_len),
    }
    features = {}
    with watch.time("extract_features"):
        for name, win in windows.items():
            features[name] = extract_features(backbone, win, feature_taps, dtype=params["feature_dtype"], desc=name)
    return Setup(params, backbone, streams, feature_taps, fingerprint_before=fingerprint_before, watch=watch,
                 **features)


def _module(setup: Setup, role: str, seed: int) -> TappedModule:
    p, d = setup.params, setup.backbone.d_model
    if role == "anchor":
        config = ModuleConfig(d, len(p["anchor_taps"]), p["anchor_bottleneck"], p["expansion"],
                              p["anchor_per_tap_norm"])
        taps = p["anchor_taps"]
    else:
        config = ModuleConfig(d, len(p["candidate_taps"]), p["candidate_bottleneck"], p["expansion"], True)
        taps = p["candidate_taps"]
    return TappedModule(ABIModule(config, seed=seed), taps, setup.feature_taps)


def _domain(setup: Setup, module: TappedModule, seed: int, label: str) -> list[float]:
    p = setup.params
    log = train_domain_stage(module, setup.backbone, setup.train, p["domain_steps"], lr=p["domain_lr"],
                             batch_windows=p["domain_batch_windows"], seed=seed, desc=f"domain stage: {label}")
    return log.losses


@dataclass
class Arms:
    """Trained modules of every arm and their training logs."""

    anchor: TappedModule
    ceiling: TappedModule
    candidates: dict[int, TappedModule]
    uncalibrated: dict[int, TappedModule]
    random_calibrated: dict[int, TappedModule]
    logs: dict[str, Any]


def _curve_probe(setup: Setup, anchor: TappedModule, targets: torch.Tensor):
    """Calibration-curve callback: held-out corrMSE and NIB on validation windows."""
    curve = setup.curve
    skip = get_protocol(setup.params["protocol"]).skip

    def probe(step: int, module: TappedModule) -> dict[str, float]:
        with torch.no_grad():
            corr = torch.cat([module(taps) for _, taps, _, _ in curve.iter_batches(16)])
        _, scores = score_variants(setup.backbone, curve, anchor, {"m": module}, skip, desc=f"curve@{step}")
        pw = scores["m"].per_window
        weights = np.asarray(pw["n_positions"], dtype=float)
        summary = {k: float(np.average(pw[k], weights=weights)) for k in ("top5", "top1", "js")}
        return {"val_corr_mse": float((corr - targets).pow(2).mean()), **{f"val_{k}": v for k, v in summary.items()}}

    return probe


def train_arms(setup: Setup) -> Arms:
    """Domain stages (anchor, ceiling, candidates), then calibration of candidates and random floors."""
    p, watch = setup.params, setup.watch
    logs: dict[str, Any] = {"domain": {}, "calibration": {}, "random_calibration": {}}
    with watch.time("domain_stages"):
        anchor = _module(setup, "anchor", p["anchor_seed"])
        logs["domain"]["anchor"] = _domain(setup, anchor, p["anchor_seed"], "anchor")
        ceiling = _module(setup, "anchor", p["ceiling_seed"])
        logs["domain"]["ceiling"] = _domain(setup, ceiling, p["ceiling_seed"], "ceiling anchor")
        candidates, uncalibrated = {}, {}
        for seed in p["candidate_seeds"]:
            candidates[seed] = _module(setup, "candidate", seed)
            logs["domain"][f"candidate/{seed}"] = _domain(setup, candidates[seed], seed, f"candidate {seed}")
            uncalibrated[seed] = copy.deepcopy(candidates[seed])
    for module in (anchor, ceiling):
        module.requires_grad_(False)
    targets = module_corrections(anchor, setup.train)
    curve_targets = module_corrections(anchor, setup.curve)
    schedule = PhaseSchedule.seed_calibration(p["calibration_steps"], p["calibration_lr"])
    probe = _curve_probe(setup, anchor, curve_targets)
    random_calibrated = {}
    with watch.time("calibration"):
        for seed in p["candidate_seeds"]:
            for kind, module in (("calibration", candidates[seed]),
                                 ("random_calibration", _module(setup, "candidate", 10_000 + seed))):
                log = calibrate(module, setup.train, targets, schedule, batch_windows=p["calibration_batch_windows"],
                                seed=seed, on_step=probe, eval_every=p["curve_every"], desc=f"{kind} {seed}")
                logs[kind][str(seed)] = log.to_dict()
                if kind == "random_calibration":
                    random_calibrated[seed] = module
    logs["schedule"] = {"phase_steps": schedule.phase_steps, "phase_lrs": schedule.phase_lrs,
                        "warmup_steps": schedule.warmup_steps}
    return Arms(anchor, ceiling, candidates, uncalibrated, random_calibrated, logs)


def arm_variants(arms: Arms) -> dict[str, torch.nn.Module | None]:
    """Every scored variant by name: ``group/seed`` for seeded arms."""
    variants: dict[str, torch.nn.Module | None] = {"no_module": None, "ceiling": arms.ceiling}
    for seed in arms.candidates:
        variants[f"candidate/{seed}"] = arms.candidates[seed]
        variants[f"uncalibrated/{seed}"] = arms.uncalibrated[seed]
        variants[f"random_calibrated/{seed}"] = arms.random_calibrated[seed]
    return variants


def evaluate_arms(setup: Setup, arms: Arms) -> dict[str, tuple[VariantScores, dict[str, VariantScores]]]:
    """Score every arm against the anchor on the held-out windows and on the official protocol."""
    skip = get_protocol(setup.params["protocol"]).skip
    variants = arm_variants(arms)
    with setup.watch.time("evaluation"):
        return {
            split: score_variants(setup.backbone, features, arms.anchor, variants, skip, desc=split)
            for split, features in (("held_out", setup.held_out), ("official", setup.official))
        }


def _comparison(scores: VariantScores, bootstrap: dict[str, int]) -> dict[str, Any]:
    per_window = {k: list(v) for k, v in scores.per_window.items()}
    nll = {"sum": scores.nll_sum, "n_tokens": scores.n_tokens}
    derived = derive_comparison(per_window, nll, bootstrap)
    return {"reference": "anchor", "per_window": per_window, "nll": nll, **derived}


def _group_stats(comparisons: dict[str, dict], group: str) -> dict[str, Any]:
    members = {k: v for k, v in comparisons.items() if k.split("/")[0] == group}
    return {
        metric: seed_interval([c["summary"][metric] for c in members.values()]).to_dict()
        for metric in ("top5", "top1", "js", "entropy_diff", "ppl")
    }


def _contrasts(comparisons: dict[str, dict], seeds: list[int], params: dict[str, Any]) -> dict[str, Any]:
    """Candidate vs ceiling (non-inferiority, fixed margin) and vs each floor (must beat it)."""
    boot = params["bootstrap"]
    out: dict[str, Any] = {}
    ceiling = comparisons["ceiling"]["per_window"]
    for seed in seeds:
        cand = comparisons[f"candidate/{seed}"]["per_window"]
        n = cand["n_positions"]
        record = {"non_inferior_to_ceiling": non_inferiority(cand["top5"], ceiling["top5"], n, params["ni_margin"],
                                                              True, n_resamples=boot["n_resamples"], seed=boot["seed"])}
        for floor in ("no_module", "uncalibrated", "random_calibrated"):
            key = floor if floor == "no_module" else f"{floor}/{seed}"
            ci = paired_difference_ci(cand["top5"], comparisons[key]["per_window"]["top5"], n, one_sided=True,
                                      n_resamples=boot["n_resamples"], seed=boot["seed"])
            record[f"beats_{floor}"] = {**ci.to_dict(), "beats": bool(ci.low > 0)}
        out[str(seed)] = record
    return out


def _tails_and_design(scores: dict[str, VariantScores], names: list[str]) -> dict[str, Any]:
    out = {}
    for name in names:
        pos = scores[name].positions()
        n = np.asarray(scores[name].per_window["n_positions"], dtype=int)
        window_ids = np.repeat(np.arange(len(n)), n)
        out[name] = {
            "js_tail": tail_summary(pos["js"]),
            "kl_tail": tail_summary(pos["kl"]),
            "js_design_effect": design_effect(pos["js"], window_ids),
            "js_naive_token_ci": naive_token_ci(pos["js"]).to_dict(),
        }
    return out


def build_result(setup: Setup, arms: Arms, scored: dict) -> dict[str, Any]:
    """The result file's content: parameters, provenance, raw per-window values, summaries, verdicts."""
    p = setup.params
    fingerprint_after = setup.backbone.fingerprint(recompute=True)
    if fingerprint_after != setup.fingerprint_before:
        raise RuntimeError("the backbone's weights changed during training; the run is invalid.")
    ref_held, held = scored["held_out"]
    ref_off, official = scored["official"]
    comparisons = {name: _comparison(s, p["bootstrap"]) for name, s in held.items()}
    official_cmp = {name: _comparison(s, p["bootstrap"]) for name, s in official.items()}
    result = {
        "schema_version": 1,
        "claim": CLAIM,
        "profile": p["profile"],
        "parameters": p,
        "provenance": provenance(),
        "backbone": {**setup.backbone.describe(), "fingerprint_before": setup.fingerprint_before,
                     "fingerprint_after": fingerprint_after, "unchanged": True},
        "data": setup.streams.identity,
        "modules": {"anchor_parameters": count_parameters(arms.anchor),
                    "candidate_parameters": count_parameters(next(iter(arms.candidates.values())))},
        "timings": setup.watch.timings,
        "resources": setup.watch.resources(),
        "published": PUBLISHED,
        "anchor_ppl": {"held_out": float(np.exp(np.sum(ref_held.nll_sum) / np.sum(ref_held.n_tokens))),
                       "official": float(np.exp(np.sum(ref_off.nll_sum) / np.sum(ref_off.n_tokens)))},
        "comparisons": comparisons,
        "official": official_cmp,
        "diagnostics": _tails_and_design(
            held, [f"candidate/{s}" for s in p["candidate_seeds"]] + ["ceiling", "no_module"]
        ),
        "training": arms.logs,
    }
    result.update(derive(result))
    return result


def derive(result: dict[str, Any]) -> dict[str, Any]:
    """Sections computed from the comparisons alone; the verifier recomputes them the same way."""
    p, comparisons, official = result["parameters"], result["comparisons"], result["official"]
    seeds = list(p["candidate_seeds"])
    return {
        "groups": {g: _group_stats(comparisons, g) for g in ("candidate", "uncalibrated", "random_calibrated")},
        "contrasts": _contrasts(comparisons, seeds, p),
        "verdicts": {
            "official_pass_per_seed": {str(s): official[f"candidate/{s}"]["verdict"] for s in seeds},
            "held_out_pass_per_seed": {str(s): comparisons[f"candidate/{s}"]["verdict"] for s in seeds},
        },
    }


register_deriver(CLAIM, derive)


def glue_values(result: dict[str, Any]) -> dict[str, Any]:
    """Numbers the book's prose pulls in with myst-nb ``glue`` (never typed by hand)."""
    from abi.reports.core_nib import claim_verdict

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
