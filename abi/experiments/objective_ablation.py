"""Claim 3, the calibration-objective ablation: seven objectives, each at its own best learning
rate, several training seeds, judged on held-out windows with intervals.

The release says raw KL reached 12.7 % lower training loss than corrMSE but 0.030 lower top-5,
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
What is derived from the result file (LR choice, intervals, verdicts) is in
:mod:`abi.experiments.objective_ablation_stats`.
"""

from __future__ import annotations

import copy
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from abi.backbones import resolve_backbone
from abi.evaluate import VariantScores, perplexity, score_variants
from abi.experiments import core_nib
from abi.experiments.core_nib import Setup, make_module, run_domain_stage
from abi.experiments.objective_ablation_stats import PUBLISHED, derive, next_lr, select_lr
from abi.features import FeatureSet
from abi.nib import get_protocol
from abi.objectives import OBJECTIVES, check_hyper, get_objective, make_objective
from abi.profiles import claim_profiles, register_profiles, resolve_parameters
from abi.results import backbone_record, comparison_record, result_document
from abi.schedule import PhaseSchedule
from abi.train import calibrate, module_corrections

CLAIM = "objective_ablation"

# Claim 1's set-up, taken from its own profiles so the two claims share anchor, candidates and cache.
_SHARED = (
    "backbone",
    "anchor_taps",
    "anchor_bottleneck",
    "anchor_per_tap_norm",
    "candidate_taps",
    "candidate_bottleneck",
    "expansion",
    "proj_out_init",
    "split_level",
    "window_len",
    "n_train_windows",
    "dialect_words",
    "dialect_seed",
    "domain_steps",
    "domain_lr",
    "domain_batch_windows",
    "domain_head_dtype",
    "domain_val_windows",
    "domain_eval_every",
    "domain_patience",
    "domain_min_delta",
    "anchor_seed",
    "protocol",
    "stat_window_len",
    "feature_dtype",
    "bootstrap_resamples",
)
# The claim-1 setting (domain and correction site) whose anchor, candidates and cached features this claim uses.
SETTING = "python"
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
    """Claim 1's shared values of profile ``name``, this claim's own defaults, then ``own``."""
    return {**{k: _CLAIM1[name][k] for k in _SHARED}, **_OWN, **own}


register_profiles(
    CLAIM,
    {
        "cpu": _profile("cpu"),
        "smoke": _profile(
            "smoke",
            calibration_steps=16,
            rolling_window=4,
            lr_grid=[5e-3, 1.5e-2],
            lr_sweep_extend=1,
            candidate_seeds=[1, 2],
            validation_windows=3,
            stat_windows=6,
            bootstrap_resamples=500,
        ),
        "paper": _profile(
            "paper",
            calibration_steps=16000,
            chunk_len=16,
            calibration_batch_chunks=32,
            lr_grid=[1.5e-3, 5e-3, 1.5e-2],
            candidate_seeds=[1, 2, 3, 4, 5],
            sweep_seed=9,
            validation_windows=32,
            stat_windows=500,
            score_official=True,
            torch_threads=0,
        ),
    },
)


# -- parameters ------------------------------------------------------------------------------------
def validate(profile: str, **overrides: Any) -> dict[str, Any]:
    """Resolve and check every parameter before any long work (names, hyper-parameters, grids, splits).

    Ranges every claim shares (learning rates, counts, seeds, split names) are checked by
    :func:`abi.profiles.resolve_parameters`; the checks here are this claim's own.
    """
    params = resolve_parameters(CLAIM, profile, **overrides)
    spec = resolve_backbone(params["backbone"])
    protocol = get_protocol(params["protocol"])
    if params["eval_split"] not in ("test", "train"):
        raise ValueError(
            f"eval_split must be 'test' (held out) or 'train' (the original's in-training evaluation), "
            f"got {params['eval_split']!r}; the validation split is reserved for the LR sweep."
        )
    objectives = params["objectives"]
    for name in objectives:
        get_objective(name)
    if len(set(objectives)) != len(objectives) or "corr_mse" not in objectives:
        raise ValueError(
            f"objectives must list each objective once and include 'corr_mse' (the reference of "
            f"every contrast), got {objectives}."
        )
    for name, hyper in params["objective_hyper"].items():
        if name not in objectives:
            raise ValueError(f"objective_hyper names {name!r}, which is not among objectives {objectives}.")
        if not isinstance(hyper, dict):
            raise ValueError(f"objective_hyper[{name!r}] must be a dict like {{'temperature': 2.0}}, got {hyper!r}.")
        check_hyper(name, hyper)
    grids = {
        "lr_grid": params["lr_grid"],
        **{f"lr_grid_overrides[{k!r}]": v for k, v in params["lr_grid_overrides"].items()},
    }
    for name, grid in grids.items():
        if not grid or any(not isinstance(lr, (int, float)) or not 0 < lr < 1 for lr in grid):
            raise ValueError(f"{name} must be a non-empty list of learning rates in (0, 1), got {grid!r}.")
    for name in params["lr_grid_overrides"]:
        if name not in objectives:
            raise ValueError(f"lr_grid_overrides names {name!r}, which is not among objectives {objectives}.")
    if params["calibration_steps"] < 4:
        raise ValueError("calibration_steps must be at least 4 (the four LR phases of the release's schedule).")
    seq_len = protocol.cont_len if spec.is_encoder_decoder else params["window_len"]
    if seq_len % params["chunk_len"]:
        raise ValueError(f"chunk_len={params['chunk_len']} must divide the training window length {seq_len}.")
    if params["calibration_batch_chunks"] < 1 or params["rolling_window"] < 1:
        raise ValueError("calibration_batch_chunks and rolling_window must be positive.")
    if params["lr_sweep_extend"] < 0:
        raise ValueError(
            f"lr_sweep_extend must be >= 0 (extra LRs past an edge optimum), got {params['lr_sweep_extend']}."
        )
    if params["torch_threads"] < 0:
        raise ValueError(
            f"torch_threads must be 0 (torch's default) or a positive count, got {params['torch_threads']}."
        )
    params["bootstrap"] = {"n_resamples": params["bootstrap_resamples"], "seed": 0}
    return params


def lr_grid(params: dict[str, Any], objective: str) -> list[float]:
    """The learning rates swept for one objective."""
    return [float(lr) for lr in params["lr_grid_overrides"].get(objective, params["lr_grid"])]


def build_objective(params: dict[str, Any], name: str):
    """The calibration objective ``name`` with this run's hyper-parameters for it."""
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
        setup = core_nib.prepare({**params, "curve_windows": params["validation_windows"]}, SETTING)
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


def _calibrate_copy(
    setup: Setup,
    start: torch.nn.Module,
    objective: str,
    lr: float,
    seed: int,
    chunks: PositionChunks,
    targets: Tensor,
    label: str,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Calibrate a copy of ``start``; hidden-space objectives get no backbone (they cannot touch it)."""
    params = setup.params
    module = copy.deepcopy(start)
    loss = build_objective(params, objective)
    schedule = PhaseSchedule.release_calibration(params["calibration_steps"], lr)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    log = calibrate(
        module,
        chunks,
        targets,
        schedule,
        objective=loss,
        batch_windows=params["calibration_batch_chunks"],
        seed=seed,
        rolling_window=params["rolling_window"],
        backbone=setup.backbone if loss.needs_head else None,
        desc=label,
    )
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    record = {
        "objective": objective,
        "lr": lr,
        "seed": seed,
        "losses": log.losses,
        "best_step": log.best_step,
        "best_rolling_loss_logged": log.best_rolling_loss,
        "backbone_passed": loss.needs_head,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "s_per_step": wall / schedule.total_steps,
    }
    return module, record


def _validation_scores(
    setup: Setup, anchor: torch.nn.Module, modules: dict[str, torch.nn.Module], label: str
) -> dict[str, dict[str, list]]:
    """Per-window NIB of the sweep's modules on the validation windows (the anchor's logits made once)."""
    skip = get_protocol(setup.params["protocol"]).skip
    _, scores = score_variants(setup.backbone, setup.curve, anchor, modules, skip, desc=label)
    return {
        name: {k: list(variant.per_window[k]) for k in ("top5", "top1", "js", "n_positions")}
        for name, variant in scores.items()
    }


def _sweep(
    setup: Setup,
    anchor: torch.nn.Module,
    start: torch.nn.Module,
    objective: str,
    batches: int,
    chunks: PositionChunks,
    targets: Tensor,
) -> tuple[list[dict[str, Any]], dict[str, torch.nn.Module]]:
    """Calibrate ``start`` at every LR of the grid, score each on the validation windows, and go on one LR
    past an edge optimum (at the grid's ratio) up to ``lr_sweep_extend`` times."""
    params = setup.params
    records: list[dict[str, Any]] = []
    modules: dict[str, torch.nn.Module] = {}
    todo: list[float] | None = sorted(lr_grid(params, objective))
    for _ in range(params["lr_sweep_extend"] + 1):
        new = {}
        for lr in todo:
            new[str(lr)], record = _calibrate_copy(
                setup, start, objective, lr, batches, chunks, targets, f"sweep {objective} lr={lr:g}"
            )
            records.append(record)
        scores = _validation_scores(setup, anchor, new, f"validation: sweep {objective}")
        for record in records[-len(todo) :]:
            record["validation"] = scores[str(record["lr"])]
        modules.update(new)
        step = next_lr(records, params["rolling_window"])
        if step is None or str(step) in modules:
            break
        todo = [step]
    return records, modules


def train_arms(setup: Setup) -> Arms:
    """Domain stages, the LR sweep on validation windows, then every objective at its best LR per seed."""
    with torch_threads(setup.params["torch_threads"]):
        return _train_arms(setup)


def _train_arms(setup: Setup) -> Arms:
    params, watch = setup.params, setup.watch
    sweep_seed = params["sweep_seed"]
    logs: dict[str, Any] = {"domain": {}, "runs": {}}
    with watch.time("domain_stages"):
        anchor = make_module(setup, "anchor", params["anchor_seed"])
        logs["domain"]["anchor"] = run_domain_stage(setup, anchor, params["anchor_seed"], "anchor")
        candidates = {}
        for seed in dict.fromkeys([*params["candidate_seeds"], sweep_seed]):
            candidates[seed] = make_module(setup, "candidate", seed)
            logs["domain"][f"candidate/{seed}"] = run_domain_stage(setup, candidates[seed], seed, f"candidate {seed}")
    anchor.requires_grad_(False)
    chunks = PositionChunks(setup.train, params["chunk_len"])
    targets = chunks.chunk(module_corrections(anchor, setup.train))
    # The sweep runs on one candidate. If it is a reported seed, its run at the chosen LR is that seed's run
    # (same batches as the other seeds' runs would use); otherwise it has its own domain stage and batches.
    reuse = sweep_seed in params["candidate_seeds"]
    sweep_batches = sweep_seed if reuse else 1000 + sweep_seed
    logs["sweep_reused_as_seed"] = sweep_seed if reuse else None
    sweep: dict[str, list[dict[str, Any]]] = {}
    runs: dict[str, dict[int, torch.nn.Module]] = {name: {} for name in params["objectives"]}
    for objective in params["objectives"]:
        with watch.time("lr_sweep"):
            sweep[objective], modules = _sweep(
                setup, anchor, candidates[sweep_seed], objective, sweep_batches, chunks, targets
            )
            best = select_lr(sweep[objective], params["rolling_window"])["best_lr"]
        if reuse:
            runs[objective][sweep_seed] = modules[str(best)]
            chosen = next(r for r in sweep[objective] if r["lr"] == best)
            logs["runs"][f"{objective}/{sweep_seed}"] = {k: v for k, v in chosen.items() if k != "validation"}
        with watch.time("calibration"):
            for seed in params["candidate_seeds"]:
                if seed not in runs[objective]:
                    runs[objective][seed], record = _calibrate_copy(
                        setup, candidates[seed], objective, best, seed, chunks, targets, f"{objective} seed {seed}"
                    )
                    logs["runs"][f"{objective}/{seed}"] = record
    uncalibrated = {seed: candidates[seed] for seed in params["candidate_seeds"]}
    return Arms(anchor=anchor, uncalibrated=uncalibrated, runs=runs, sweep=sweep, logs=logs)


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
def build_result(setup: Setup, arms: Arms, scored: dict) -> dict[str, Any]:
    """The result file's content: parameters, provenance, raw per-window values, the sweep, logs, verdicts."""
    params = setup.params
    backbone = backbone_record(setup.backbone, setup.fingerprint_before)
    anchor_held_out, held_out = scored["held_out"]
    official = (
        {name: comparison_record(s, params["bootstrap"], "anchor") for name, s in scored["official"][1].items()}
        if "official" in scored
        else {}
    )
    result = result_document(
        CLAIM,
        params,
        backbone=backbone,
        data=setup.streams.identity,
        objectives={name: build_objective(params, name).describe() for name in params["objectives"]},
        timings=setup.watch.timings,
        resources={**setup.watch.resources(), "cpu_s": round(_cpu_seconds(), 1)},
        published=PUBLISHED,
        anchor_ppl={"held_out": perplexity(anchor_held_out)},
        comparisons={name: comparison_record(s, params["bootstrap"], "anchor") for name, s in held_out.items()},
        official=official,
        sweep=arms.sweep,
        training=arms.logs,
    )
    result.update(derive(result))
    return result
