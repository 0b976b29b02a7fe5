"""Benchmark: how far a trained module moves when torch's thread count changes.

A CPU sum split over two threads adds its floats in another order than one thread does, so two runs from
the same seed on the same data drift apart by rounding. The cold build (``benchmarks/cold_build.py``) met
the consequence: claim 2's committed Python-setting modules had been trained with two threads, the cold
build trained them with one, its numbers moved and one sub-verdict of that setting changed. Claim
notebooks now pin the count (``abi.notebook.pin_torch_threads``). This measures the effect on the module
that showed it, on the ``cpu`` profile: claim 2's first source module (SmolLM2-135M, Python, seed 1),
trained from the same seed on the same cached features with one thread, again with one (same count: must
be identical), and with two; and the setting's native target module (Gemma-3-270M, seed 0), the reference
every arm is scored against, with one thread and with two. The runs never touch the module store.

Recorded in ``results/benchmarks.json`` (section ``thread_determinism``): per run the thread count, the
steps, the best step, every validation loss and how far each stopping decision lay from the plateau
rule's threshold; per pair whether the losses and weights are identical, the first step whose loss
differs, the largest loss and weight differences.

Run: ``python -m benchmarks.thread_determinism`` (about 6 minutes with warm caches on 2 cores; not part
of ``make benchmarks``, which keeps to 15 minutes).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from abi.experiments.cross_architecture import validate
from abi.experiments.cross_architecture_arms import domain_rule, new_module
from abi.experiments.cross_architecture_setup import prepare_setting
from abi.kd_calibration import head_precision
from abi.module import ABIModule
from abi.train import TrainLog, train_domain_stage
from benchmarks.common import write_section

SETTING = "python: smollm2-135m->gemma3-270m"  # the setting whose verdict moved in the cold build
# (side, seed, thread counts): claim 2's first source module, and the native target module that every arm of
# the setting is scored against; the repeated count shows a run is deterministic at a fixed count.
MODULES = (("source", 1, (1, 1, 2)), ("target", 0, (1, 2)))


def train_with_threads(setup: Any, side: str, seed: int, threads: int) -> tuple[ABIModule, TrainLog]:
    """Claim 2's domain stage for one module, exactly as ``domain_module`` runs it, on ``threads``."""
    params = setup.params
    backbone = setup.source if side == "source" else setup.target
    taps = setup.source_taps if side == "source" else setup.target_taps
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        module = new_module(params, backbone.d_model, len(taps), seed)
        log = train_domain_stage(
            module,
            backbone,
            setup.features[f"{side}_train"],
            params["domain_steps"],
            lr=params["domain_lr"],
            batch_windows=params["domain_batch_windows"],
            seed=seed,
            desc=f"{SETTING}: {side} {backbone.name} {seed}, {threads} thread(s)",
            validation=setup.features[f"{side}_val"],
            plateau=domain_rule(params),
            head_dtype=head_precision(params["head_dtype"]),
        )
    finally:
        torch.set_num_threads(before)
    return module, log


def decision_margins(val_losses: list[float], min_delta: float) -> list[dict[str, float]]:
    """At each evaluation after the first, the relative improvement on the best loss so far and how far it
    lies from ``min_delta``, the plateau rule's threshold (``abi.train.train_domain_stage`` counts an
    evaluation as an improvement when ``loss < best * (1 - min_delta)``); a margin near zero is a stopping
    decision that rounding can turn."""
    best, margins = val_losses[0], []
    for loss in val_losses[1:]:
        improvement = 1 - loss / best
        margins.append({"improvement": improvement, "margin": improvement - min_delta})
        if loss < best * (1 - min_delta):
            best = loss
    return margins


def compare_runs(first: tuple[ABIModule, TrainLog], second: tuple[ABIModule, TrainLog]) -> dict[str, Any]:
    """Identical or not, and by how much: per-step losses and every trained weight."""
    (module_a, log_a), (module_b, log_b) = first, second
    losses = list(zip(log_a.losses, log_b.losses))
    differing = [step for step, (a, b) in enumerate(losses) if a != b]
    weights_a, weights_b = module_a.state_dict(), module_b.state_dict()
    weight_gap = max((weights_a[name] - weights_b[name]).abs().max().item() for name in weights_a)
    return {
        "identical": not differing and len(log_a.losses) == len(log_b.losses) and weight_gap == 0.0,
        "first_differing_step": differing[0] if differing else None,
        "max_loss_difference": max((abs(a - b) for a, b in losses), default=0.0),
        "max_weight_difference": weight_gap,
    }


def _run_record(threads: int, log: TrainLog, min_delta: float) -> dict[str, Any]:
    val_losses = [evaluation["val_loss"] for evaluation in log.evaluations]
    return {
        "threads": threads,
        "steps": len(log.losses),
        "best_step": log.best_step,
        "evaluation_steps": [evaluation["step"] for evaluation in log.evaluations],
        "validation_losses": val_losses,
        "best_validation_loss": log.best_val_loss,
        "decision_margins": decision_margins(val_losses, min_delta),
    }


def module_record(setup: Any, side: str, seed: int, thread_counts: tuple[int, ...]) -> dict[str, Any]:
    """One module trained at each of ``thread_counts``; the first run compared with a repeat at its own
    count (when there is one) and with the last run."""
    runs = [train_with_threads(setup, side, seed, threads) for threads in thread_counts]
    min_delta = setup.params["domain_min_delta"]
    repeat = thread_counts.index(thread_counts[0], 1) if thread_counts.count(thread_counts[0]) > 1 else None
    backbone = setup.source if side == "source" else setup.target
    return {
        "side": side,
        "seed": seed,
        "backbone": backbone.name,
        "runs": [_run_record(t, log, min_delta) for t, (_, log) in zip(thread_counts, runs)],
        "same_threads": compare_runs(runs[0], runs[repeat]) if repeat else None,
        "other_threads": compare_runs(runs[0], runs[-1]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.parse_args(argv)
    setup = prepare_setting(validate("cpu"), SETTING)
    record = {
        "setting": SETTING,
        "profile": "cpu",
        "min_delta": setup.params["domain_min_delta"],
        "modules": [module_record(setup, side, seed, counts) for side, seed, counts in MODULES],
        "source": "measured in this run",
    }
    print(json.dumps(record, indent=1))
    print(f"written to {write_section('cpu', 'thread_determinism', record)}")


if __name__ == "__main__":
    main()
