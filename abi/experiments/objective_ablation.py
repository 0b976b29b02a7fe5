"""Claim 3, the calibration-objective ablation: seven objectives, each at its own best learning
rate, several training seeds, judged on held-out windows with intervals.

The seed says raw KL reached 12.7 % lower training loss than corrMSE but 0.030 lower top-5,
logit-MSE was catastrophic (top-5 about 0.6), weighted corrMSE hurt, and corrMSE is the one that
works; it ran each objective once and judged it on one set of five windows. Here:

* the anchor and the candidates are claim 1's (same profiles, same domain stage, same cached
  features: :func:`abi.experiments.core_nib.prepare` builds them);
* every objective of :mod:`abi.objectives` calibrates copies of the same domain-trained candidates
  with the same schedule, steps and positions per step;
* a short LR sweep per objective on one candidate, scored on *validation* windows, picks each
  objective's peak LR; the reported runs (one per training seed) use it and are scored on held-out
  *test* windows against the anchor, with the uncalibrated candidates and the bare backbone as floors.
  When the sweep's candidate is one of the reported seeds (the ``cpu`` profile, to save compute), its
  run at the chosen LR is that seed's reported run; the ``paper`` profile sweeps on a separate seed.

The module is position-wise (no attention), so calibration batches are built from short chunks of
many windows (:class:`PositionChunks`): more distinct contexts per step for the same compute.
Hidden-space objectives are calibrated with ``backbone=None``: they cannot touch the backbone.
"""

from __future__ import annotations

import copy
import math
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from abi.backbones import resolve_backbone
from abi.evaluate import VariantScores, score_variants
from abi.experiments import core_nib
from abi.experiments.core_nib import Setup, _domain, _module
from abi.experiments.objective_ablation_stats import derive, next_lr, select_lr
from abi.features import FeatureSet
from abi.nib import get_protocol
from abi.objectives import OBJECTIVES, check_hyper, get_objective, make_objective
from abi.profiles import claim_profiles, register_profiles, resolve_parameters
from abi.results import derive_comparison, provenance, register_deriver
from abi.schedule import PhaseSchedule
from abi.train import calibrate, module_corrections

CLAIM = "objective_ablation"
PUBLISHED = {
    "setting": "T5-large, claim-1 anchor and candidate, seven calibration objectives, one run each, "
    "judged on one set of five windows",
    "kl_training_loss_reduction": 0.127,
    "kl_top5_drop": 0.030,
    "logit_mse_top5": 0.6,
    "weighted_corr_mse": "hurt (no figure given)",
}

# Claim 1's set-up, taken from its own profiles so the two claims share anchor, candidates and cache.
_SHARED = ("backbone", "anchor_taps", "anchor_bottleneck", "anchor_per_tap_norm", "candidate_taps",
           "candidate_bottleneck", "expansion", "split_level", "window_len", "n_train_windows", "domain_steps",
           "domain_lr", "domain_batch_windows", "anchor_seed", "protocol", "stat_window_len", "feature_dtype",
           "bootstrap_resamples")
_OWN: dict[str, Any] = {
    "eval_split": "test",
    "objectives": list(OBJECTIVES),
    "objective_hyper": {},
    "lr_grid": [1.5e-3, 5e-3, 1.5e-2],
    "lr_grid_overrides": {},
    "lr_sweep_extend": 2,
    "calibration_steps": 120,
    "chunk_len": 16,
    "calibration_batch_chunks": 4,
    "rolling_window": 50,
    "candidate_seeds": [1, 2, 3],
    "sweep_seed": 1,
    "validation_windows": 8,
    "stat_windows": 24,
    "score_official": False,
    "torch_threads": 1,
}
_CLAIM1 = claim_profiles(core_nib.CLAIM)


def _profile(name: str, **own: Any) -> dict[str, Any]:
    return {**{k: _CLAIM1[name][k] for k in _SHARED}, **_OWN, **own}


register_profiles(
    CLAIM,
    {
        "cpu": _profile("cpu"),
        "smoke": _profile("smoke", calibration_steps=16, rolling_window=4, lr_grid=[5e-3, 1.5e-2], lr_sweep_extend=1,
                          candidate_seeds=[1, 2], validation_windows=3, stat_windows=6, bootstrap_resamples=500),
        "paper": _profile("paper", calibration_steps=16000, chunk_len=16, calibration_batch_chunks=32,
                          lr_grid=[1.5e-3, 5e-3, 1.5e-2], candidate_seeds=[1, 2, 3, 4, 5], sweep_seed=9,
                          validation_windows=32, stat_windows=500, score_official=True, torch_threads=0),
    },
)


# -- parameters ------------------------------------------------------------------------------------
def validate(profile: str, **overrides: Any) -> dict[str, Any]:
    """Resolve and check every parameter before any long work (names, hyper-parameters, grids, splits)."""
    p = resolve_parameters(CLAIM, profile, **overrides)
    spec = resolve_backbone(p["backbone"])
    protocol = get_protocol(p["protocol"])
    if p["eval_split"] not in ("test", "train"):
        raise ValueError(f"eval_split must be 'test' (held out) or 'train' (the original's in-training evaluation), "
                         f"got {p['eval_split']!r}; the validation split is reserved for the LR sweep.")
    objectives = p["objectives"]
    for name in objectives:
        get_objective(name)
    if len(set(objectives)) != len(objectives) or "corr_mse" not in objectives:
        raise ValueError(f"objectives must list each objective once and include 'corr_mse' (the reference of "
                         f"every contrast), got {objectives}.")
    for name, hyper in p["objective_hyper"].items():
        if name not in objectives:
            raise ValueError(f"objective_hyper names {name!r}, which is not among objectives {objectives}.")
        if not isinstance(hyper, dict):
            raise ValueError(f"objective_hyper[{name!r}] must be a dict like {{'temperature': 2.0}}, got {hyper!r}.")
        check_hyper(name, hyper)
    for name, grid in {"lr_grid": p["lr_grid"], **{f"lr_grid_overrides[{k!r}]": v
                                                   for k, v in p["lr_grid_overrides"].items()}}.items():
        if not grid or any(not isinstance(lr, (int, float)) or not 0 < lr < 1 for lr in grid):
            raise ValueError(f"{name} must be a non-empty list of learning rates in (0, 1), got {grid!r}.")
    for name in p["lr_grid_overrides"]:
        if name not in objectives:
            raise ValueError(f"lr_grid_overrides names {name!r}, which is not among objectives {objectives}.")
    seeds = p["candidate_seeds"]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"candidate_seeds must list distinct training seeds, got {seeds}.")
    if p["calibration_steps"] < 4:
        raise ValueError("calibration_steps must be at least 4 (the four LR phases of the seed's schedule).")
    seq_len = protocol.cont_len if spec.is_encoder_decoder else p["window_len"]
    if p["chunk_len"] < 1 or seq_len % p["chunk_len"]:
        raise ValueError(f"chunk_len={p['chunk_len']} must divide the training window length {seq_len}.")
    if p["calibration_batch_chunks"] < 1 or p["rolling_window"] < 1 or p["validation_windows"] < 1:
        raise ValueError("calibration_batch_chunks, rolling_window and validation_windows must be positive.")
    if p["lr_sweep_extend"] < 0:
        raise ValueError(f"lr_sweep_extend must be >= 0 (extra LRs past an edge optimum), got {p['lr_sweep_extend']}.")
    if p["torch_threads"] < 0:
        raise ValueError(f"torch_threads must be 0 (torch's default) or a positive count, got {p['torch_threads']}.")
    p["bootstrap"] = {"n_resamples": p["bootstrap_resamples"], "seed": 0}
    return p


def lr_grid(params: dict[str, Any], objective: str) -> list[float]:
    """The learning rates swept for one objective."""
    return [float(lr) for lr in params["lr_grid_overrides"].get(objective, params["lr_grid"])]


def build_objective(params: dict[str, Any], name: str):
    return make_objective(name, **params["objective_hyper"].get(name, {}))


# -- set-up ------------------------------------------------------------------------------------------
@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` torch threads (0: leave torch's default). On a 2-core machine shared with
    other work, two torch threads spin against each other: measured here, a calibration step and the
    NIB evaluator ran 3-30x slower with two threads than with one, so the small profiles use one."""
    previous = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def prepare(params: dict[str, Any]) -> Setup:
    """Claim 1's set-up: backbone, streams, windows, cached features (validation = the sweep's windows)."""
    with torch_threads(params["torch_threads"]):
        setup = core_nib.prepare({**params, "curve_windows": params["validation_windows"]})
    setup.params = params
    return setup


class PositionChunks:
    """Cached features seen as windows of ``chunk_len`` consecutive positions.

    The ABI module reads every position on its own, so a batch of chunks from many windows trains
    it exactly as whole windows would, with more distinct contexts per step. Duck-types the part
    of :class:`abi.features.FeatureSet` that :func:`abi.train.calibrate` uses.
    """

    def __init__(self, features: FeatureSet, chunk_len: int):
        seq_len = features.windows.seq_len
        if seq_len % chunk_len:
            raise ValueError(f"chunk_len={chunk_len} must divide the window length {seq_len}.")
        self.features, self.chunk_len, self.per_window = features, chunk_len, seq_len // chunk_len

    def __len__(self) -> int:
        return len(self.features) * self.per_window

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        index = torch.as_tensor(index)
        taps, final, labels = self.features.batch(index // self.per_window)
        positions = (index % self.per_window)[:, None] * self.chunk_len + torch.arange(self.chunk_len)
        rows = torch.arange(len(index))[:, None]
        return taps[rows, positions], final[rows, positions], labels[rows, positions]

    def chunk(self, per_window: Tensor) -> Tensor:
        """``[N, T, ...]`` aligned with the windows -> ``[N * T / chunk_len, chunk_len, ...]`` aligned with chunks."""
        return per_window.reshape(len(self), self.chunk_len, *per_window.shape[2:])


# -- training ----------------------------------------------------------------------------------------
@dataclass
class Arms:
    """Anchor, domain-trained candidates, the sweep's records and the calibrated runs."""

    anchor: torch.nn.Module
    uncalibrated: dict[int, torch.nn.Module]
    runs: dict[str, dict[int, torch.nn.Module]]
    sweep: dict[str, list[dict[str, Any]]]
    logs: dict[str, Any]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _calibrate_copy(setup: Setup, start: torch.nn.Module, objective: str, lr: float, seed: int,
                    chunks: PositionChunks, targets: Tensor, label: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Calibrate a copy of ``start``; hidden-space objectives get no backbone (they cannot touch it)."""
    p = setup.params
    module = copy.deepcopy(start)
    loss = build_objective(p, objective)
    schedule = PhaseSchedule.seed_calibration(p["calibration_steps"], lr)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    log = calibrate(module, chunks, targets, schedule, objective=loss, batch_windows=p["calibration_batch_chunks"],
                    seed=seed, rolling_window=p["rolling_window"], backbone=setup.backbone if loss.needs_head else None,
                    desc=label)
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    record = {"objective": objective, "lr": lr, "seed": seed, "losses": log.losses, "best_step": log.best_step,
              "best_rolling_loss_logged": log.best_rolling_loss,
              "backbone_passed": loss.needs_head, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
              "s_per_step": wall / schedule.total_steps}
    return module, record


def _validation_scores(setup: Setup, anchor: torch.nn.Module, modules: dict[str, torch.nn.Module],
                       label: str) -> dict[str, dict[str, list]]:
    """Per-window NIB of the sweep's modules on the validation windows (the anchor's logits made once)."""
    skip = get_protocol(setup.params["protocol"]).skip
    _, scores = score_variants(setup.backbone, setup.curve, anchor, modules, skip, desc=label)
    return {name: {k: list(s.per_window[k]) for k in ("top5", "top1", "js", "n_positions")}
            for name, s in scores.items()}


def _sweep(setup: Setup, anchor: torch.nn.Module, start: torch.nn.Module, objective: str, batches: int,
           chunks: PositionChunks, targets: Tensor) -> tuple[list[dict[str, Any]], dict[str, torch.nn.Module]]:
    """Calibrate ``start`` at every LR of the grid, score each on the validation windows, and go on one LR
    past an edge optimum (at the grid's ratio) up to ``lr_sweep_extend`` times."""
    p = setup.params
    records: list[dict[str, Any]] = []
    modules: dict[str, torch.nn.Module] = {}
    todo: list[float] | None = sorted(lr_grid(p, objective))
    for _ in range(p["lr_sweep_extend"] + 1):
        new = {}
        for lr in todo:
            new[str(lr)], record = _calibrate_copy(setup, start, objective, lr, batches, chunks, targets,
                                                   f"sweep {objective} lr={lr:g}")
            records.append(record)
        scores = _validation_scores(setup, anchor, new, f"validation: sweep {objective}")
        for record in records[-len(todo):]:
            record["validation"] = scores[str(record["lr"])]
        modules.update(new)
        step = next_lr(records, p["rolling_window"])
        if step is None or str(step) in modules:
            break
        todo = [step]
    return records, modules


def train_arms(setup: Setup) -> Arms:
    """Domain stages, the LR sweep on validation windows, then every objective at its best LR per seed."""
    with torch_threads(setup.params["torch_threads"]):
        return _train_arms(setup)


def _train_arms(setup: Setup) -> Arms:
    p, watch = setup.params, setup.watch
    logs: dict[str, Any] = {"domain": {}, "runs": {}}
    with watch.time("domain_stages"):
        anchor = _module(setup, "anchor", p["anchor_seed"])
        logs["domain"]["anchor"] = _domain(setup, anchor, p["anchor_seed"], "anchor")
        candidates = {}
        for seed in dict.fromkeys([*p["candidate_seeds"], p["sweep_seed"]]):
            candidates[seed] = _module(setup, "candidate", seed)
            logs["domain"][f"candidate/{seed}"] = _domain(setup, candidates[seed], seed, f"candidate {seed}")
    anchor.requires_grad_(False)
    chunks = PositionChunks(setup.train, p["chunk_len"])
    targets = chunks.chunk(module_corrections(anchor, setup.train))
    # The sweep runs on one candidate. If it is a reported seed, its run at the chosen LR is that seed's run
    # (same batches as the other seeds' runs would use); otherwise it has its own domain stage and batches.
    reuse = p["sweep_seed"] in p["candidate_seeds"]
    sweep_batches = p["sweep_seed"] if reuse else 1000 + p["sweep_seed"]
    logs["sweep_reused_as_seed"] = p["sweep_seed"] if reuse else None
    sweep: dict[str, list[dict[str, Any]]] = {}
    runs: dict[str, dict[int, torch.nn.Module]] = {name: {} for name in p["objectives"]}
    for objective in p["objectives"]:
        with watch.time("lr_sweep"):
            sweep[objective], modules = _sweep(setup, anchor, candidates[p["sweep_seed"]], objective, sweep_batches,
                                               chunks, targets)
            best = select_lr(sweep[objective], p["rolling_window"])["best_lr"]
        if reuse:
            runs[objective][p["sweep_seed"]] = modules[str(best)]
            chosen = next(r for r in sweep[objective] if r["lr"] == best)
            logs["runs"][f"{objective}/{p['sweep_seed']}"] = {k: v for k, v in chosen.items() if k != "validation"}
        with watch.time("calibration"):
            for seed in p["candidate_seeds"]:
                if seed not in runs[objective]:
                    runs[objective][seed], record = _calibrate_copy(setup, candidates[seed], objective, best, seed,
                                                                    chunks, targets, f"{objective} seed {seed}")
                    logs["runs"][f"{objective}/{seed}"] = record
    uncalibrated = {seed: candidates[seed] for seed in p["candidate_seeds"]}
    return Arms(anchor, uncalibrated, runs, sweep, logs)


# -- evaluation --------------------------------------------------------------------------------------
def arm_variants(arms: Arms) -> dict[str, torch.nn.Module | None]:
    """Every scored variant: ``objective/seed``, the ``uncalibrated/seed`` floors and ``no_module``."""
    variants: dict[str, torch.nn.Module | None] = {"no_module": None}
    for objective, by_seed in arms.runs.items():
        variants.update({f"{objective}/{seed}": module for seed, module in by_seed.items()})
    variants.update({f"uncalibrated/{seed}": module for seed, module in arms.uncalibrated.items()})
    return variants


@torch.no_grad()
def _corr_mse_per_window(features: FeatureSet, anchor: torch.nn.Module, variants: dict, skip: int) -> dict:
    """Held-out corrMSE to the anchor per window (scored positions only): a loss in common units."""
    out: dict[str, list[float]] = {name: [] for name in variants}
    for _, taps, _, _ in features.iter_batches(8):
        target = anchor(taps)[:, skip:]
        for name, module in variants.items():
            correction = torch.zeros_like(target) if module is None else module(taps)[:, skip:]
            out[name].extend((correction - target).pow(2).mean(dim=(1, 2)).double().tolist())
    return out


def evaluate_arms(setup: Setup, arms: Arms) -> dict[str, tuple[VariantScores, dict[str, VariantScores]]]:
    """Score every variant against the anchor on the held-out windows (and the official protocol if asked)."""
    skip = get_protocol(setup.params["protocol"]).skip
    variants = arm_variants(arms)
    splits = [("held_out", setup.held_out)] + ([("official", setup.official)] if setup.params["score_official"] else [])
    scored = {}
    with setup.watch.time("evaluation"), torch_threads(setup.params["torch_threads"]):
        for split, features in splits:
            reference, scores = score_variants(setup.backbone, features, arms.anchor, variants, skip, desc=split)
            for name, values in _corr_mse_per_window(features, arms.anchor, variants, skip).items():
                scores[name].per_window["corr_mse"] = values
            scored[split] = (reference, scores)
    return scored


# -- result file -------------------------------------------------------------------------------------
def _comparison(scores: VariantScores, bootstrap: dict[str, int]) -> dict[str, Any]:
    per_window = {k: list(v) for k, v in scores.per_window.items()}
    nll = {"sum": scores.nll_sum, "n_tokens": scores.n_tokens}
    derived = derive_comparison(per_window, nll, bootstrap)
    return {"reference": "anchor", "per_window": per_window, "nll": nll, **derived}


def build_result(setup: Setup, arms: Arms, scored: dict) -> dict[str, Any]:
    """The result file's content: parameters, provenance, raw per-window values, the sweep, logs, verdicts."""
    p = setup.params
    fingerprint_after = setup.backbone.fingerprint(recompute=True)
    if fingerprint_after != setup.fingerprint_before:
        raise RuntimeError("the backbone's weights changed during training; the run is invalid.")
    reference, held = scored["held_out"]
    official = {name: _comparison(s, p["bootstrap"]) for name, s in scored["official"][1].items()} \
        if "official" in scored else {}
    result = {
        "schema_version": 1,
        "claim": CLAIM,
        "profile": p["profile"],
        "parameters": p,
        "provenance": provenance(),
        "backbone": {**setup.backbone.describe(), "fingerprint_before": setup.fingerprint_before,
                     "fingerprint_after": fingerprint_after, "unchanged": True},
        "data": setup.streams.identity,
        "objectives": {name: build_objective(p, name).describe() for name in p["objectives"]},
        "timings": setup.watch.timings,
        "resources": {**setup.watch.resources(), "cpu_s": round(_cpu_seconds(), 1)},
        "published": PUBLISHED,
        "anchor_ppl": {"held_out": float(np.exp(np.sum(reference.nll_sum) / np.sum(reference.n_tokens)))},
        "comparisons": {name: _comparison(s, p["bootstrap"]) for name, s in held.items()},
        "official": official,
        "sweep": arms.sweep,
        "training": arms.logs,
    }
    result.update(derive(result))
    return result


register_deriver(CLAIM, derive)


def glue_values(result: dict[str, Any]) -> dict[str, Any]:
    """Numbers the book's prose pulls in with myst-nb ``glue`` (never typed by hand)."""
    groups, statements = result["groups"], result["statements"]
    values: dict[str, Any] = {
        "c3_backbone": result["backbone"]["name"],
        "c3_n_seeds": len(result["parameters"]["candidate_seeds"]),
        "c3_minutes": round(result["resources"]["wall_s"] / 60, 1),
        "c3_corr_top5": groups["corr_mse"]["top5"]["estimate"],
        "c3_corr_top5_low": groups["corr_mse"]["top5"]["low"],
        "c3_corr_top5_high": groups["corr_mse"]["top5"]["high"],
        "c3_best_verdict": statements["corr_mse_best"]["verdict"],
        "c3_best_mean": statements["corr_mse_best"]["highest_mean_top5"],
    }
    kl = statements["kl"]
    if kl["status"] == "run":
        values.update({
            "c3_kl_verdict": kl["verdict"],
            "c3_kl_top5": groups["kl_logits"]["top5"]["estimate"],
            "c3_kl_drop": kl["top5_drop"]["over_seeds"]["estimate"],
            "c3_kl_drop_low": kl["top5_drop"]["over_seeds"]["low"],
            "c3_kl_drop_high": kl["top5_drop"]["over_seeds"]["high"],
            "c3_kl_loss_reduction": kl["training_loss_reduction"]["estimate"],
        })
    if "logit_mse" in groups:
        values["c3_logit_mse_top5"] = groups["logit_mse"]["top5"]["estimate"]
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
