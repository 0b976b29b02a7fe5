"""Claim 4, one setting end to end: modules on B, every updated backbone B' scored as soon as it exists
(its features, our oracle, raw / zero-shot / oracle NLL and flips on the same held-out windows), then
the setting's raw record; ``backbone_invariance_stats`` derives every summary from it.

One B' is held in memory at a time (besides the shared plain updates), so the protected arm, which has
one B' per update seed and module seed, does not multiply the memory needed.
"""

from __future__ import annotations

from typing import Any

import torch

from abi.backbones import Backbone
from abi.evaluate import score_variants
from abi.experiments.backbone_invariance_setup import Setup
from abi.experiments.backbone_invariance_training import check_zero_shot, domain_module, module_record, protected_update
from abi.experiments.common import parse_setting
from abi.features import IGNORE_INDEX, FeatureSet, extract_features
from abi.finetune import FinetuneRun, token_nll, window_nll
from abi.module import ABIModule, count_parameters
from abi.results import comparison_record
from abi.train import module_logits

BATCH_WINDOWS = 4


def _window_nll(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    return token_nll(logits, labels).sum(dim=1).double().tolist()


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=-1) == labels) & (labels != IGNORE_INDEX)


@torch.no_grad()
def _score(
    backbone: Backbone, features: FeatureSet, modules: dict[str, ABIModule | None]
) -> tuple[dict[str, list[float]], dict[str, list[torch.Tensor]]]:
    """Per-window NLL of every named condition and its per-position argmax hits, batch by batch."""
    nll: dict[str, list[float]] = {name: [] for name in modules}
    hits: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    for _, taps, final, labels in features.iter_batches(BATCH_WINDOWS):
        for name, module in modules.items():
            logits = module_logits(backbone, module, taps, final)
            nll[name].extend(_window_nll(logits, labels))
            hits[name].append(_correct(logits, labels))
    return nll, hits


def _n_tokens(features: FeatureSet) -> list[int]:
    return [
        int(n) for *_, labels in features.iter_batches(BATCH_WINDOWS) for n in (labels != IGNORE_INDEX).sum(1).tolist()
    ]


def _flips(before: list[torch.Tensor], after: list[torch.Tensor]) -> list[int]:
    """Per window: positions right before and wrong after (negative flips)."""
    return [int(n) for b, a in zip(before, after) for n in (b & ~a).sum(dim=1).tolist()]


def _updated_features(setup: Setup, updated: Backbone) -> tuple[FeatureSet, FeatureSet]:
    params, taps = setup.params, setup.shared.taps
    with setup.watch.time("extract_features_updated"):
        train = extract_features(updated, setup.code_train, taps, dtype=params["feature_dtype"], desc="B' train")
        held_out = extract_features(updated, setup.code_eval, taps, dtype=params["feature_dtype"], desc="B' held_out")
    return train, held_out


def _update_record(run: FinetuneRun) -> dict[str, Any]:
    return {
        "backbone": {**run.backbone.describe(), "fingerprint": run.backbone.fingerprint()},
        "config": run.config.to_dict(),
        "key": run.key,
        "from_cache": run.from_cache,
        "log": run.log(),
    }


def run_cells(
    setup: Setup, run: FinetuneRun, modules: dict[int, ABIModule], hits_b: dict[str, list[torch.Tensor]], label: str
) -> dict[str, Any]:
    """Score one B': raw, each module zero-shot, our oracle; negative flips against B."""
    updated = run.backbone
    for module in modules.values():
        check_zero_shot(module_record(module, setup.shared.taps, setup.shared.backbone), updated)
    train, held_out = _updated_features(setup, updated)
    with setup.watch.time("oracle"):
        oracle, losses = domain_module(setup, train, updated, setup.params["oracle_seed"], f"fresh module on {label}")
    conditions: dict[str, ABIModule | None] = {"raw": None, "oracle": oracle}
    conditions.update({f"zero_shot/{m}": module for m, module in modules.items()})
    with setup.watch.time("evaluation"):
        nll, hits = _score(updated, held_out, conditions)
    cells, flips = {}, {}
    for m in modules:
        cells[m] = {"raw": nll["raw"], "zero_shot": nll[f"zero_shot/{m}"], "oracle": nll["oracle"]}
        flips[m] = {
            "module": _flips(hits_b[f"B/module/{m}"], hits[f"zero_shot/{m}"]),
            "raw": _flips(hits_b["B/raw"], hits["raw"]),
        }
    return {"cells": cells, "flips": flips, "oracle_losses": losses}


def run_setting_block(setup: Setup) -> dict[str, Any]:
    """Modules on B, the bare-backbone NIB against each, every update arm's cells; the raw record."""
    shared, params, watch = setup.shared, setup.params, setup.watch
    base = shared.backbone
    losses: dict[str, list[float]] = {}
    modules: dict[int, ABIModule] = {}
    with watch.time("modules_on_B"):
        for m in params["module_seeds"]:
            modules[m], losses[f"B/module/{m}"] = domain_module(setup, setup.train, base, m, f"module {m} on B")
        fresh, losses["B/fresh"] = domain_module(setup, setup.train, base, params["oracle_seed"], "fresh module on B")
    with watch.time("evaluation"):
        conditions: dict[str, ABIModule | None] = {"B/raw": None, "B/fresh": fresh}
        conditions.update({f"B/module/{m}": module for m, module in modules.items()})
        nll, hits_b = _score(base, setup.held_out, conditions)
        comparisons = {}
        for m, module in modules.items():
            _, scores = score_variants(
                base, setup.held_out, module, {"no_module": None}, shared.protocol.skip, desc=f"bare B vs module {m}"
            )
            comparisons[f"no_module/{m}"] = comparison_record(
                scores["no_module"], params["bootstrap"], f"B + module {m}"
            )
    cells: dict[str, dict[str, Any]] = {arm: {} for arm in params["updates"]}
    flips: dict[str, dict[str, Any]] = {arm: {} for arm in params["updates"]}
    updates: dict[str, Any] = {}
    prose_nll = {k: v for k, v in shared.prose_nll.items() if k == "B" or k.startswith("plain/")}
    for u, run in shared.plain.items():
        scored = run_cells(setup, run, modules, hits_b, f"plain update {u}")
        for m in modules:
            cells["plain"][f"{u}/{m}"] = scored["cells"][m]
            flips["plain"][f"{u}/{m}"] = scored["flips"][m]
        losses[f"plain/{u}/oracle"] = scored["oracle_losses"]
        updates[f"plain/{u}"] = _update_record(run)
    if "protected" in params["updates"]:
        for u in params["protected_update_seeds"]:
            for m in params["protected_module_seeds"]:
                with watch.time("protected/finetune"):
                    run = protected_update(setup, modules[m], u, m)
                scored = run_cells(setup, run, {m: modules[m]}, hits_b, f"protected update {u}/{m}")
                cells["protected"][f"{u}/{m}"] = scored["cells"][m]
                flips["protected"][f"{u}/{m}"] = scored["flips"][m]
                losses[f"protected/{u}/{m}/oracle"] = scored["oracle_losses"]
                updates[f"protected/{u}/{m}"] = _update_record(run)
                with watch.time("prose_perplexity"):
                    prose_nll[f"protected/{u}/{m}"], _ = window_nll(run.backbone, shared.prose_eval, desc="prose")
    domain, site = parse_setting(setup.setting)
    return {
        "domain": domain,
        "correction_site": site,
        "module_seeds": list(params["module_seeds"]),
        "data": {"code": setup.code.identity, "code_eval_sha256": setup.code_eval.content_hash()},
        "windows": {"n_tokens": _n_tokens(setup.held_out)},
        "nll": nll,
        "correct": {name: [int(n) for h in hits for n in h.sum(dim=1).tolist()] for name, hits in hits_b.items()},
        "cells": cells,
        "flips": flips,
        "prose": {"n_tokens": shared.prose_tokens, "nll": prose_nll},
        "comparisons": comparisons,
        "updates": updates,
        "module": {
            "config": modules[params["module_seeds"][0]].config.to_dict(),
            "parameters": count_parameters(fresh),
        },
        "training": losses,
        "stored_modules": setup.stored_modules,
        "timings": watch.timings,
    }
