"""Benchmark: how far a trained module moves when torch's thread count changes.

A CPU sum split over two threads adds its floats in another order than one thread does, so two runs from
the same seed on the same data drift apart by rounding. The cold build (``benchmarks/cold_build.py``) met
the consequence: claim 2's committed Python-setting modules had been trained with two threads, the cold
build trained them with one, its numbers moved and one sub-verdict of that setting changed. Claim
notebooks now pin the count (``abi.notebook.pin_torch_threads``). This measures the effect on the module
that showed it: claim 2's first source module (SmolLM2-135M, Python, seed 1, ``cpu`` profile), trained
from the same seed on the same cached features with one thread, again with one (same count: must be
identical), and with two. The runs never touch the module store.

Recorded in ``results/benchmarks.json`` (section ``thread_determinism``): per run the thread count, steps,
final and best validation loss; per pair whether the losses and weights are identical, the first step
whose loss differs, the largest loss and weight differences.

Run: ``python -m benchmarks.thread_determinism`` (about 2 minutes with warm caches; part of
``make benchmarks``).
"""

from __future__ import annotations

import argparse
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
SEED = 1
THREAD_COUNTS = (1, 1, 2)  # the repeat shows the run is deterministic at a fixed count


def train_with_threads(setup: Any, threads: int) -> tuple[ABIModule, TrainLog]:
    """Claim 2's source domain stage for ``SEED``, exactly as ``domain_module`` runs it, on ``threads``."""
    params, backbone = setup.params, setup.source
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        module = new_module(params, backbone.d_model, len(setup.source_taps), SEED)
        log = train_domain_stage(
            module,
            backbone,
            setup.features["source_train"],
            params["domain_steps"],
            lr=params["domain_lr"],
            batch_windows=params["domain_batch_windows"],
            seed=SEED,
            desc=f"{SETTING}: source {backbone.name} {SEED}, {threads} thread(s)",
            validation=setup.features["source_val"],
            plateau=domain_rule(params),
            head_dtype=head_precision(params["head_dtype"]),
        )
    finally:
        torch.set_num_threads(before)
    return module, log


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


def _run_record(threads: int, log: TrainLog) -> dict[str, Any]:
    return {
        "threads": threads,
        "steps": len(log.losses),
        "best_step": log.best_step,
        "validation_losses": [evaluation["val_loss"] for evaluation in log.evaluations],
        "best_validation_loss": log.best_val_loss,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.parse_args(argv)
    setup = prepare_setting(validate("cpu"), SETTING)
    runs = [train_with_threads(setup, threads) for threads in THREAD_COUNTS]
    record = {
        "setting": SETTING,
        "seed": SEED,
        "profile": "cpu",
        "runs": [_run_record(threads, log) for threads, (_, log) in zip(THREAD_COUNTS, runs)],
        "same_threads": compare_runs(runs[0], runs[1]),
        "one_vs_two_threads": compare_runs(runs[0], runs[2]),
        "source": "measured in this run",
    }
    print(record)
    print(f"written to {write_section('cpu', 'thread_determinism', record)}")


if __name__ == "__main__":
    main()
