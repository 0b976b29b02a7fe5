"""Claim 1, core NIB: two independently initialised modules on one frozen backbone agree after
the candidate is calibrated to the anchor's corrections (corrMSE).

The claim runs in several *settings* (``settings``), each a domain and a correction site:
``python`` (the weak regime: the backbone already knows Python), ``python-dialect`` (the strong
regime: a seeded dialect of the same code, :mod:`abi.dialect`) and ``python-dialect@before_final_norm``
(the project's earlier correction site, kept as an arm). Arms of every setting, all scored against
its anchor on the same held-out windows:

* ``candidate``: multi-tap module with per-tap LN, own domain stage, then corrMSE calibration
  (one per training seed) — the claim;
* ``uncalibrated``: the same candidates before calibration (floor);
* ``random_calibrated``: an untrained module of the candidate's shape put through the identical
  calibration (floor: what calibration alone achieves);
* ``no_module``: the bare backbone (floor);
* ``ceiling``: a second anchor trained identically with another seed (seed-noise ceiling).

Settings in ``dose_settings`` also get a calibration-data dose-response: trained and untrained
modules calibrated on the first 8, 32, 256 training windows.

The notebook calls :func:`validate`, then per setting :func:`run_setting` (prepare, train, evaluate),
then :func:`build_result`; this file holds the algorithm, the notebook the narrative, and
:mod:`abi.experiments.core_nib_stats` what is derived from the result file (intervals, gates, verdicts).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from abi.backbones import (
    DEFAULT_CORRECTION_SITE,
    Backbone,
    check_correction_site,
    load_backbone,
    resolve_backbone,
)
from abi.cache_integrity import atomic_write_json
from abi.evaluate import VariantScores, score_variants
from abi.experiments.common import (
    CorpusStreams,
    TappedModule,
    check_domain,
    check_proj_out_init,
    check_protocol_fits,
    check_split_fits,
    domain_split,
    load_streams,
    make_windows,
    parse_setting,
    spread_starts,
    training_windows,
    window_span,
)
from abi.experiments.core_nib_stats import PUBLISHED, derive
from abi.experiments.module_stages import (
    calibrated,
    calibration_schedule,
    domain_trained,
    head_dtype,
    make_module,
    plateau_rule,
)
from abi.features import FeatureSet, extract_features
from abi.module import count_parameters
from abi.module_store import code_digest
from abi.nib import get_protocol, tail_summary
from abi.paths import cache_dir
from abi.profiles import register_profiles, resolve_parameters
from abi.results import Stopwatch, backbone_record, comparison_record, result_document
from abi.stats import design_effect, naive_token_ci

CLAIM = "core_nib"

# Profiles: plain values a notebook's parameters cell may override (None = the profile's value).
_CPU: dict[str, Any] = {
    "backbone": "smollm2-135m",
    "settings": ["python", "python-dialect", "python-dialect@before_final_norm"],
    "dialect_words": 200,
    "dialect_seed": 0,
    "anchor_taps": [30],
    "anchor_bottleneck": 256,
    "anchor_per_tap_norm": False,
    "candidate_taps": [25, 26, 27, 28, 29, 30],
    "candidate_bottleneck": 512,
    "expansion": 4,
    "proj_out_init": "zero",
    "split_level": "file",
    "eval_split": "test",
    "window_len": 128,
    "n_train_windows": 512,
    "domain_steps": 600,
    "domain_lr": 3e-4,
    "domain_batch_windows": 4,
    "domain_head_dtype": "bfloat16",
    "domain_val_windows": 32,
    "domain_eval_every": 50,
    "domain_patience": 2,
    "domain_min_delta": 0.005,
    "calibration_steps": 300,
    "calibration_lr": 5e-3,
    "calibration_batch_windows": 8,
    "anchor_seed": 0,
    "ceiling_seed": 100,
    "candidate_seeds": [1, 2, 3],
    "site_arm_seeds": [1],
    "dose_settings": ["python-dialect"],
    "dose_windows": [8, 32, 256],
    "dose_calibration_steps": 150,
    "dose_eval_windows": 64,
    "protocol": "faq",
    "stat_windows": 96,
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
            "domain_steps": 20,
            "domain_val_windows": 4,
            "domain_eval_every": 10,
            "calibration_steps": 40,
            "dose_calibration_steps": 20,
            "candidate_seeds": [1, 2],
            "dose_windows": [4, 8, 32],
            "dose_eval_windows": 8,
            "stat_windows": 16,
            "stat_window_len": 64,
            "curve_every": 10,
            "curve_windows": 4,
            "bootstrap_resamples": 500,
        },
        "paper": {
            **_CPU,
            "backbone": "t5-large",
            "settings": ["python", "python-dialect"],
            "anchor_taps": [24],
            "anchor_bottleneck": 512,
            "candidate_taps": [19, 20, 21, 22, 23, 24],
            "candidate_bottleneck": 4096,
            "n_train_windows": 4000,
            "domain_steps": 20000,
            "domain_eval_every": 500,
            "domain_batch_windows": 2,
            "domain_head_dtype": "float32",
            "calibration_steps": 16000,
            "dose_calibration_steps": 4000,
            "calibration_batch_windows": 8,
            "protocol": "t5-prefix",
            "stat_windows": 500,
            "curve_every": 500,
            "curve_windows": 32,
        },
    },
)


def check_settings(params: dict[str, Any], example: list[str]) -> None:
    """``settings`` is a non-empty list of distinct settings, each a known domain (at the dialect's dose)
    and a known correction site; claims 1 and 3 share the rule."""
    settings = params["settings"]
    if not settings or len(set(settings)) != len(settings):
        raise ValueError(f"settings must be a non-empty list without duplicates, got {settings!r}; e.g. {example!r}.")
    for name in settings:
        domain, site = parse_setting(name)
        check_domain(domain, params["dialect_words"])
        check_correction_site(site)


def validate(profile: str, **overrides: Any) -> dict[str, Any]:
    """Resolve and check every parameter before any long work (model names, protocol, settings, doses).

    Ranges every claim shares (learning rates, counts, seeds, split names) are checked by
    :func:`abi.profiles.resolve_parameters`.
    """
    params = resolve_parameters(CLAIM, profile, **overrides)
    resolve_backbone(params["backbone"])
    get_protocol(params["protocol"])
    check_settings(params, _CPU["settings"])
    settings = params["settings"]
    if not any(parse_setting(name)[1] == DEFAULT_CORRECTION_SITE for name in settings):
        raise ValueError(
            f"at least one setting must use the release's correction site ({DEFAULT_CORRECTION_SITE}); "
            f"got {settings!r}."
        )
    unknown = [name for name in params["dose_settings"] if name not in settings]
    if unknown:
        raise ValueError(f"dose_settings {unknown} are not among settings {settings}; list a subset (or []).")
    doses = params["dose_windows"]
    if any(not 1 <= d <= params["n_train_windows"] for d in doses) or len(set(doses)) != len(doses):
        raise ValueError(
            f"dose_windows must be distinct window counts in 1..n_train_windows "
            f"({params['n_train_windows']}), got {doses!r}."
        )
    if not 1 <= params["dose_eval_windows"] <= params["stat_windows"]:
        raise ValueError(
            f"dose_eval_windows must lie in 1..stat_windows ({params['stat_windows']}), "
            f"got {params['dose_eval_windows']}."
        )
    if not set(params["site_arm_seeds"]) <= set(params["candidate_seeds"]):
        raise ValueError(
            f"site_arm_seeds {params['site_arm_seeds']} must be a subset of candidate_seeds "
            f"{params['candidate_seeds']}."
        )
    check_proj_out_init(params["proj_out_init"])
    plateau_rule(params)
    head_dtype(params)
    _check_domains_fit(params)
    if min(params["calibration_steps"], params["dose_calibration_steps"]) < 4:
        raise ValueError(
            "calibration_steps and dose_calibration_steps must be at least 4 (the four LR phases of "
            "the release's schedule)."
        )
    params["bootstrap"] = {"n_resamples": params["bootstrap_resamples"], "seed": 0}
    return params


def _check_domains_fit(params: dict[str, Any]) -> None:
    """Every setting's domain text can hold its windows (checked on characters, before any model loads)."""
    protocol = get_protocol(params["protocol"])
    stat = params["stat_window_len"] if protocol.layout == "causal" else protocol.prefix_len + protocol.cont_len
    needs = {
        "train": params["n_train_windows"] * params["window_len"],
        "validation": (params["curve_windows"] + params["domain_val_windows"]) * stat,
        params["eval_split"]: params["stat_windows"] * stat,
    }
    for domain in dict.fromkeys(parse_setting(name)[0] for name in params["settings"]):
        _, split = domain_split(params["split_level"], domain, params["dialect_words"], params["dialect_seed"])
        check_split_fits(split, needs, domain)


def setting_seeds(params: dict[str, Any], setting: str) -> list[int]:
    """Candidate seeds of a setting: all of them at the release's site, ``site_arm_seeds`` elsewhere."""
    return list(
        params["candidate_seeds"] if parse_setting(setting)[1] == DEFAULT_CORRECTION_SITE else params["site_arm_seeds"]
    )


@dataclass
class Setup:
    """Everything one setting prepares once: backbone at its site, streams, windows, cached features."""

    params: dict[str, Any]
    setting: str
    seeds: list[int]
    backbone: Backbone
    streams: CorpusStreams
    feature_taps: tuple[int, ...]
    train: FeatureSet
    domain_val: FeatureSet
    curve: FeatureSet
    held_out: FeatureSet
    official: FeatureSet
    fingerprint_before: str
    watch: Stopwatch = field(default_factory=Stopwatch)


def prepare(params: dict[str, Any], setting: str) -> Setup:
    """Load the backbone at the setting's site, check taps, tokenize its domain, cut windows, cache features.

    Features do not depend on the site (they hold the last block's output before the final norm),
    so two settings of one domain share their cache entries.
    """
    watch = Stopwatch()
    domain, site = parse_setting(setting)
    with watch.time("load_backbone"):
        backbone = load_backbone(params["backbone"], site)
    anchor_taps = backbone.check_taps(params["anchor_taps"])
    candidate_taps = backbone.check_taps(params["candidate_taps"])
    protocol = get_protocol(params["protocol"])
    check_protocol_fits(backbone, protocol)
    fingerprint_before = backbone.fingerprint(recompute=True)
    with watch.time("tokenize_corpus"):
        streams = load_streams(backbone, params["split_level"], domain, params["dialect_words"], params["dialect_seed"])
    eval_stream = streams.streams[params["eval_split"]]
    span_stat = window_span(backbone, protocol, params["stat_window_len"])
    stat_starts = spread_starts(len(eval_stream), span_stat, params["stat_windows"], protocol.seed)
    official_starts = protocol.draw_starts(len(eval_stream))
    validation = streams.streams["validation"]
    curve_starts = spread_starts(len(validation), span_stat, params["curve_windows"], protocol.seed + 1)
    domain_val_starts = spread_starts(len(validation), span_stat, params["domain_val_windows"], protocol.seed + 2)
    feature_taps = tuple(sorted(set(anchor_taps) | set(candidate_taps)))
    windows = {
        "train": training_windows(backbone, streams, protocol, params["window_len"], params["n_train_windows"]),
        "domain_val": make_windows(backbone, validation, domain_val_starts, protocol, params["stat_window_len"]),
        "curve": make_windows(backbone, validation, curve_starts, protocol, params["stat_window_len"]),
        "held_out": make_windows(backbone, eval_stream, stat_starts, protocol, params["stat_window_len"]),
        "official": make_windows(backbone, eval_stream, official_starts, protocol, protocol.window_len),
    }
    features = {}
    with watch.time("extract_features"):
        for name, split_windows in windows.items():
            features[name] = extract_features(
                backbone, split_windows, feature_taps, dtype=params["feature_dtype"], desc=f"{setting}: {name}"
            )
    return Setup(
        params=params,
        setting=setting,
        seeds=setting_seeds(params, setting),
        backbone=backbone,
        streams=streams,
        feature_taps=feature_taps,
        fingerprint_before=fingerprint_before,
        watch=watch,
        **features,
    )


@dataclass
class Arms:
    """Trained modules of every arm and their training logs."""

    anchor: TappedModule
    ceiling: TappedModule
    candidates: dict[int, TappedModule]
    uncalibrated: dict[int, TappedModule]
    random_calibrated: dict[int, TappedModule]
    logs: dict[str, Any]


def train_arms(setup: Setup) -> Arms:
    """Domain stages (anchor, ceiling, candidates), then calibration of candidates and random floors;
    each stage read from the module store when it ran before (:mod:`abi.experiments.module_stages`)."""
    params, watch = setup.params, setup.watch
    logs: dict[str, Any] = {"domain": {}, "calibration": {}, "random_calibration": {}}
    with watch.time("domain_stages"):
        anchor, logs["domain"]["anchor"] = domain_trained(setup, "anchor", params["anchor_seed"], "anchor")
        ceiling, logs["domain"]["ceiling"] = domain_trained(setup, "anchor", params["ceiling_seed"], "ceiling anchor")
        candidates, uncalibrated = {}, {}
        for seed in setup.seeds:
            candidates[seed], logs["domain"][f"candidate/{seed}"] = domain_trained(
                setup, "candidate", seed, f"candidate {seed}"
            )
            uncalibrated[seed] = copy.deepcopy(candidates[seed])
    for module in (anchor, ceiling):
        module.requires_grad_(False)
    schedule = calibration_schedule(params)
    random_calibrated = {}
    with watch.time("calibration"):
        for seed in setup.seeds:
            for kind, module in (
                ("calibration", candidates[seed]),
                ("random_calibration", make_module(setup, "candidate", 10_000 + seed)),
            ):
                label = f"{setup.setting}: {kind} {seed}"
                logs[kind][str(seed)] = calibrated(
                    setup, module, anchor, setup.train, schedule, seed, label, with_curve=True
                )
                if kind == "random_calibration":
                    random_calibrated[seed] = module
    logs["schedule"] = {
        "phase_steps": schedule.phase_steps,
        "phase_lrs": schedule.phase_lrs,
        "warmup_steps": schedule.warmup_steps,
    }
    logs["plateau_rule"] = plateau_rule(params).to_dict()
    return Arms(
        anchor=anchor,
        ceiling=ceiling,
        candidates=candidates,
        uncalibrated=uncalibrated,
        random_calibrated=random_calibrated,
        logs=logs,
    )


def arm_variants(arms: Arms) -> dict[str, torch.nn.Module | None]:
    """Every scored variant by name: ``group/seed`` for seeded arms."""
    variants: dict[str, torch.nn.Module | None] = {"no_module": None, "ceiling": arms.ceiling}
    for seed in arms.candidates:
        variants[f"candidate/{seed}"] = arms.candidates[seed]
        variants[f"uncalibrated/{seed}"] = arms.uncalibrated[seed]
        variants[f"random_calibrated/{seed}"] = arms.random_calibrated[seed]
    return variants


def evaluate_arms(setup: Setup, arms: Arms) -> dict[str, tuple[VariantScores, dict[str, VariantScores]]]:
    """Score every arm against the anchor on the held-out windows (all positions and the effect
    positions) and on the official protocol."""
    skip = get_protocol(setup.params["protocol"]).skip
    variants = arm_variants(arms)
    with setup.watch.time("evaluation"):
        return {
            split: score_variants(
                setup.backbone,
                features,
                arms.anchor,
                variants,
                skip,
                desc=f"{setup.setting}: {split}",
                effect_positions=split == "held_out",
            )
            for split, features in (("held_out", setup.held_out), ("official", setup.official))
        }


def run_dose_response(setup: Setup, arms: Arms) -> dict[str, VariantScores]:
    """Calibration-data dose-response: each trained candidate (before calibration) and an untrained
    module of its shape, calibrated on the first ``d`` training windows for every dose ``d``, scored
    with the uncalibrated candidates on the first ``dose_eval_windows`` held-out windows.

    If independent modules learn the same domain, the trained candidate should beat the untrained
    one where calibration data are scarce; with plenty of data, calibration alone may suffice.
    """
    params = setup.params
    schedule = calibration_schedule(params, "dose_calibration_steps")
    variants: dict[str, torch.nn.Module | None] = {}
    with setup.watch.time("dose_response"):
        for dose in params["dose_windows"]:
            subset = setup.train.first(dose)
            for seed in setup.seeds:
                for arm, module in (
                    ("trained", copy.deepcopy(arms.uncalibrated[seed])),
                    ("untrained", make_module(setup, "candidate", 10_000 + seed)),
                ):
                    module.requires_grad_(True)
                    label = f"{setup.setting}: dose {dose}, {arm} {seed}"
                    calibrated(setup, module, arms.anchor, subset, schedule, seed, label)
                    variants[f"{arm}/{dose}/{seed}"] = module
        for seed in setup.seeds:
            variants[f"uncalibrated/{seed}"] = arms.uncalibrated[seed]
        evaluation = setup.held_out.first(params["dose_eval_windows"])
        skip = get_protocol(params["protocol"]).skip
        _, scores = score_variants(
            setup.backbone, evaluation, arms.anchor, variants, skip, desc=f"{setup.setting}: dose-response"
        )
    return scores


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


def _nll_record(scores: VariantScores) -> dict[str, list]:
    return {"sum": list(scores.nll_sum), "n_tokens": list(scores.n_tokens)}


def setting_record(setup: Setup, arms: Arms, scored: dict, dose: dict[str, VariantScores] | None) -> dict[str, Any]:
    """The raw content of one setting: identity, the anchor's NLL, every comparison, dose-response, logs."""
    bootstrap = setup.params["bootstrap"]
    anchor_held_out, held_out = scored["held_out"]
    anchor_official, official = scored["official"]
    domain, site = parse_setting(setup.setting)
    comparisons = {}
    for name, scores in held_out.items():
        comparisons[name] = comparison_record(scores, bootstrap, "anchor")
        comparisons[name]["effect_per_window"] = {k: list(v) for k, v in scores.effect_per_window.items()}
    return {
        "domain": domain,
        "correction_site": site,
        "candidate_seeds": setup.seeds,
        "data": setup.streams.identity,
        "anchor_nll": {"held_out": _nll_record(anchor_held_out), "official": _nll_record(anchor_official)},
        "comparisons": comparisons,
        "official": {name: comparison_record(s, bootstrap, "anchor") for name, s in official.items()},
        "dose_response": {name: comparison_record(s, bootstrap, "anchor") for name, s in (dose or {}).items()},
        "diagnostics": _tails_and_design(held_out, [f"candidate/{s}" for s in setup.seeds] + ["ceiling", "no_module"]),
        "training": arms.logs,
        "timings": setup.watch.timings,
    }


@dataclass
class SettingRun:
    """One finished setting: its record for the result file and what the result's header needs."""

    record: dict[str, Any]
    backbone: Backbone
    fingerprint_before: str
    modules: dict[str, int]
    resources: dict[str, float]


def _library_digest() -> str:
    """sha256 over the code a setting's run imports (:func:`abi.module_store.code_digest`): a code change
    there invalidates a kept setting; an edit to a report, a figure or another claim does not."""
    return code_digest(__name__)


def _finished_setting_path(params: dict[str, Any], setting: str) -> Path:
    """Where a finished setting is kept until the result is written, keyed by the parameters, the setting
    and the library's code."""
    key = hashlib.sha256(
        json.dumps(
            {"params": params, "setting": setting, "library": _library_digest()}, sort_keys=True, default=str
        ).encode()
    ).hexdigest()[:24]
    return cache_dir() / "runs" / CLAIM / f"{key}.json"


def run_setting(params: dict[str, Any], setting: str, resume: bool = True) -> SettingRun:
    """Prepare, train, evaluate (and, for ``dose_settings``, the dose-response) one setting.

    A finished setting is kept on disk, so a run that stops in a later setting resumes after the last
    finished one (same parameters and same code only); ``resume=False`` recomputes it.
    """
    path = _finished_setting_path(params, setting)
    if resume and path.is_file():
        try:
            kept = json.loads(path.read_text())
            backbone = load_backbone(params["backbone"], parse_setting(setting)[1])
            print(f"{setting}: resumed from the finished run kept in {path.parent.name}/{path.name}")
            return SettingRun(kept["record"], backbone, kept["fingerprint_before"], kept["modules"], kept["resources"])
        except (OSError, ValueError, KeyError) as error:
            print(f"{setting}: the kept run {path.name} is unreadable ({error}); running the setting again")
    setup = prepare(params, setting)
    arms = train_arms(setup)
    scored = evaluate_arms(setup, arms)
    dose = run_dose_response(setup, arms) if setting in params["dose_settings"] else None
    modules = {
        "anchor_parameters": count_parameters(arms.anchor),
        "candidate_parameters": count_parameters(next(iter(arms.candidates.values()))),
    }
    run = SettingRun(
        setting_record(setup, arms, scored, dose),
        setup.backbone,
        setup.fingerprint_before,
        modules,
        setup.watch.resources(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = {
        "record": run.record,
        "fingerprint_before": run.fingerprint_before,
        "modules": run.modules,
        "resources": run.resources,
    }
    atomic_write_json(path, json.loads(json.dumps(kept, default=_plain_number)), indent=None)
    return run


def _plain_number(value: Any) -> Any:
    """numpy scalars as Python numbers, for JSON."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def build_result(params: dict[str, Any], runs: dict[str, SettingRun]) -> dict[str, Any]:
    """The result file's content: parameters, provenance, every setting's raw values, then what is derived."""
    first = next(iter(runs.values()))
    result = result_document(
        CLAIM,
        params,
        backbone=backbone_record(first.backbone, first.fingerprint_before),
        modules=first.modules,
        timings={name: run.record["timings"] for name, run in runs.items()},
        resources=first.resources,
        published=PUBLISHED,
        settings={name: {k: v for k, v in run.record.items() if k != "timings"} for name, run in runs.items()},
    )
    result.update(derive(result))
    return result
