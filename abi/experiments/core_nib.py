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
and :func:`build_result` in turn; this file holds the algorithm, the notebook the narrative, and
:mod:`abi.experiments.core_nib_stats` what is derived from the result file (intervals, verdicts).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from abi.backbones import Backbone, load_backbone, resolve_backbone
from abi.evaluate import VariantScores, perplexity, score_variants
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
from abi.experiments.core_nib_stats import PUBLISHED, derive
from abi.features import FeatureSet, extract_features
from abi.module import ABIModule, ModuleConfig, count_parameters
from abi.nib import get_protocol, tail_summary
from abi.profiles import register_profiles, resolve_parameters
from abi.results import Stopwatch, backbone_record, comparison_record, result_document
from abi.schedule import PhaseSchedule
from abi.stats import design_effect, naive_token_ci
from abi.train import calibrate, module_corrections, train_domain_stage

CLAIM = "core_nib"

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
    """Resolve and check every parameter before any long work (model names, protocol, the schedule's length).

    Ranges every claim shares (learning rates, counts, seeds, split names) are checked by
    :func:`abi.profiles.resolve_parameters`.
    """
    params = resolve_parameters(CLAIM, profile, **overrides)
    resolve_backbone(params["backbone"])
    get_protocol(params["protocol"])
    if params["calibration_steps"] < 4:
        raise ValueError("calibration_steps must be at least 4 (the four LR phases of the release's schedule).")
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
        for name, split_windows in windows.items():
            features[name] = extract_features(backbone, split_windows, feature_taps, dtype=params["feature_dtype"],
                                              desc=name)
    return Setup(params=params, backbone=backbone, streams=streams, feature_taps=feature_taps,
                 fingerprint_before=fingerprint_before, watch=watch, **features)


def make_module(setup: Setup, role: str, seed: int) -> TappedModule:
    """A freshly initialised module of the anchor's shape (``role="anchor"``) or the candidate's."""
    params = setup.params
    if role == "anchor":
        taps, bottleneck = params["anchor_taps"], params["anchor_bottleneck"]
        per_tap_norm = params["anchor_per_tap_norm"]
    else:
        taps, bottleneck, per_tap_norm = params["candidate_taps"], params["candidate_bottleneck"], True
    config = ModuleConfig(d_model=setup.backbone.d_model, n_taps=len(taps), bottleneck=bottleneck,
                          expansion=params["expansion"], per_tap_norm=per_tap_norm)
    return TappedModule(ABIModule(config, seed=seed), taps, setup.feature_taps)


def run_domain_stage(setup: Setup, module: TappedModule, seed: int, label: str) -> list[float]:
    """Train ``module`` on the domain through the frozen head; returns the per-step losses."""
    params = setup.params
    log = train_domain_stage(module, setup.backbone, setup.train, params["domain_steps"], lr=params["domain_lr"],
                             batch_windows=params["domain_batch_windows"], seed=seed, desc=f"domain stage: {label}")
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
            corrections = torch.cat([module(taps) for _, taps, _, _ in curve.iter_batches(16)])
        _, scores = score_variants(setup.backbone, curve, anchor, {"m": module}, skip, desc=f"curve@{step}")
        per_window = scores["m"].per_window
        weights = np.asarray(per_window["n_positions"], dtype=float)
        summary = {k: float(np.average(per_window[k], weights=weights)) for k in ("top5", "top1", "js")}
        return {"val_corr_mse": float((corrections - targets).pow(2).mean()),
                **{f"val_{k}": v for k, v in summary.items()}}

    return probe


def train_arms(setup: Setup) -> Arms:
    """Domain stages (anchor, ceiling, candidates), then calibration of candidates and random floors."""
    params, watch = setup.params, setup.watch
    logs: dict[str, Any] = {"domain": {}, "calibration": {}, "random_calibration": {}}
    with watch.time("domain_stages"):
        anchor = make_module(setup, "anchor", params["anchor_seed"])
        logs["domain"]["anchor"] = run_domain_stage(setup, anchor, params["anchor_seed"], "anchor")
        ceiling = make_module(setup, "anchor", params["ceiling_seed"])
        logs["domain"]["ceiling"] = run_domain_stage(setup, ceiling, params["ceiling_seed"], "ceiling anchor")
        candidates, uncalibrated = {}, {}
        for seed in params["candidate_seeds"]:
            candidates[seed] = make_module(setup, "candidate", seed)
            logs["domain"][f"candidate/{seed}"] = run_domain_stage(setup, candidates[seed], seed, f"candidate {seed}")
            uncalibrated[seed] = copy.deepcopy(candidates[seed])
    for module in (anchor, ceiling):
        module.requires_grad_(False)
    targets = module_corrections(anchor, setup.train)
    curve_targets = module_corrections(anchor, setup.curve)
    schedule = PhaseSchedule.release_calibration(params["calibration_steps"], params["calibration_lr"])
    probe = _curve_probe(setup, anchor, curve_targets)
    random_calibrated = {}
    with watch.time("calibration"):
        for seed in params["candidate_seeds"]:
            for kind, module in (("calibration", candidates[seed]),
                                 ("random_calibration", make_module(setup, "candidate", 10_000 + seed))):
                log = calibrate(module, setup.train, targets, schedule,
                                batch_windows=params["calibration_batch_windows"], seed=seed, on_step=probe,
                                eval_every=params["curve_every"], desc=f"{kind} {seed}")
                logs[kind][str(seed)] = log.to_dict()
                if kind == "random_calibration":
                    random_calibrated[seed] = module
    logs["schedule"] = {"phase_steps": schedule.phase_steps, "phase_lrs": schedule.phase_lrs,
                        "warmup_steps": schedule.warmup_steps}
    return Arms(anchor=anchor, ceiling=ceiling, candidates=candidates, uncalibrated=uncalibrated,
                random_calibrated=random_calibrated, logs=logs)


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


def _tails_and_design(scores: dict[str, VariantScores], names: list[str]) -> dict[str, Any]:
    """Per-position JS/KL tails and how much clustering by window widens a token-level interval."""
    out = {}
    for name in names:
        positions = scores[name].positions()
        n_positions = np.asarray(scores[name].per_window["n_positions"], dtype=int)
        window_ids = np.repeat(np.arange(len(n_positions)), n_positions)
        out[name] = {
            "js_tail": tail_summary(positions["js"]),
            "kl_tail": tail_summary(positions["kl"]),
            "js_design_effect": design_effect(positions["js"], window_ids),
            "js_naive_token_ci": naive_token_ci(positions["js"]).to_dict(),
        }
    return out


def build_result(setup: Setup, arms: Arms, scored: dict) -> dict[str, Any]:
    """The result file's content: parameters, provenance, raw per-window values, summaries, verdicts."""
    params = setup.params
    backbone = backbone_record(setup.backbone, setup.fingerprint_before)
    anchor_held_out, held_out = scored["held_out"]
    anchor_official, official = scored["official"]
    result = result_document(
        CLAIM, params,
        backbone=backbone,
        data=setup.streams.identity,
        modules={"anchor_parameters": count_parameters(arms.anchor),
                 "candidate_parameters": count_parameters(next(iter(arms.candidates.values())))},
        timings=setup.watch.timings,
        resources=setup.watch.resources(),
        published=PUBLISHED,
        anchor_ppl={"held_out": perplexity(anchor_held_out), "official": perplexity(anchor_official)},
        comparisons={name: comparison_record(s, params["bootstrap"], "anchor") for name, s in held_out.items()},
        official={name: comparison_record(s, params["bootstrap"], "anchor") for name, s in official.items()},
        diagnostics=_tails_and_design(
            held_out, [f"candidate/{s}" for s in params["candidate_seeds"]] + ["ceiling", "no_module"]
        ),
        training=arms.logs,
    )
    result.update(derive(result))
    return result

