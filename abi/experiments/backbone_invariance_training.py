"""Claim 4, the update arms: the module and the original's oracle on B, then per update the updated
backbone B', the refusal rule for a zero-shot application, and our oracle (a fresh module on B').
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from abi.backbones import Backbone
from abi.checkpoints import CheckpointError, ModuleRecord, backbone_facts, check_fits
from abi.experiments.backbone_invariance_setup import Setup
from abi.experiments.common import frozen_domain_module, untrained_module
from abi.features import FeatureSet, extract_features
from abi.finetune import FinetuneConfig, FinetuneRun, finetune_backbone, window_nll
from abi.module import ABIModule, ModuleConfig, parameter_hash


def finetune_config(params: dict[str, Any], update: str, taps: tuple[int, ...]) -> FinetuneConfig:
    """The update's settings; the protected update also keeps the module's tap states close to B's."""
    protected = update == "protected"
    return FinetuneConfig(
        steps=params["finetune_steps"],
        lr=params["finetune_lr"],
        batch_windows=params["finetune_batch_windows"],
        weight_decay=params["finetune_weight_decay"],
        warmup_steps=params["finetune_warmup_steps"],
        seed=params["finetune_seed"],
        protect_weight=params["protect_weight"] if protected else 0.0,
        protect_taps=taps if protected else (),
    )


# -- the refusal rule ------------------------------------------------------------------------------
def module_record(module: ABIModule, taps: tuple[int, ...], backbone: Backbone) -> ModuleRecord:
    """The facts a module file would carry, for a module held in memory."""
    return ModuleRecord(
        config=module.config,
        taps=tuple(taps),
        backbone=backbone_facts(backbone),
        seed=module.seed,
        parameter_sha256=parameter_hash(module),
        extra={},
    )


def check_zero_shot(record: ModuleRecord, updated: Backbone) -> None:
    """Refuse to apply a module unchanged to a backbone of another architecture, width or depth.

    A zero-shot application only makes sense on an update of the module's own backbone; a module
    for another architecture must be migrated (claim 2), never silently mis-applied.
    """
    family = record.backbone.get("family")
    if family != updated.spec.family:
        raise CheckpointError(
            f"the module was trained on a {family!r} backbone ({record.backbone.get('name')}), but {updated.name!r} "
            f"is a {updated.spec.family!r} model: a zero-shot application needs the same architecture; migrate the "
            "module with the cross-architecture procedure instead."
        )
    check_fits(record, updated, source=f"module from {record.backbone.get('name')}")


# -- training ---------------------------------------------------------------------------------------
@dataclass
class UpdateArm:
    """One updated backbone B' with its features, its fresh (oracle) module and its prose NLL."""

    run: FinetuneRun
    held_out: FeatureSet
    oracle: ABIModule
    prose_nll: list[float]
    oracle_losses: list[float]


@dataclass
class Trained:
    """Every module of one backbone, each update B', and the prose NLL before the updates."""

    module: ABIModule
    fresh: ABIModule
    prose_nll_before: list[float]
    prose_tokens: list[int]
    updates: dict[str, UpdateArm]
    losses: dict[str, list[float]]


def domain_module(
    setup: Setup, features: FeatureSet, backbone: Backbone, seed: int, label: str
) -> tuple[ABIModule, list[float]]:
    """A new module trained by the domain stage on ``backbone``, then frozen; and its per-step losses."""
    params = setup.params
    config = ModuleConfig(
        d_model=backbone.d_model, n_taps=len(setup.taps), bottleneck=params["bottleneck"], expansion=params["expansion"]
    )
    module = untrained_module(config, seed, params["zero_init_proj_out"])
    return frozen_domain_module(module, backbone, features, params, params["domain_steps"], seed, label)


def train(setup: Setup) -> Trained:
    """Module and original's oracle on B; each update B'; zero-shot check; our oracle on B'."""
    params, watch, base = setup.params, setup.watch, setup.backbone
    with watch.time("modules_on_B"):
        module, module_losses = domain_module(setup, setup.train, base, params["module_seed"], "module on B")
        fresh, fresh_losses = domain_module(setup, setup.train, base, params["oracle_seed"], "fresh module on B")
    losses = {"B/module": module_losses, "B/fresh": fresh_losses}
    with watch.time("prose_perplexity"):
        prose_before, prose_tokens = window_nll(base, setup.prose_eval, desc="prose before the update")
    record = module_record(module, setup.taps, base)
    updates: dict[str, UpdateArm] = {}
    for update in params["updates"]:
        with watch.time(f"{update}/finetune"):
            run = finetune_backbone(
                base,
                setup.prose_train,
                finetune_config(params, update, setup.taps),
                data=setup.prose.identity,
                checkpoint_every=params["checkpoint_every"],
                desc=f"{update} update",
            )
        updated = run.backbone
        check_zero_shot(record, updated)
        with watch.time(f"{update}/extract_features"):
            train_updated = extract_features(
                updated, setup.code_train, setup.taps, dtype=params["feature_dtype"], desc="train"
            )
            held_out_updated = extract_features(
                updated, setup.code_eval, setup.taps, dtype=params["feature_dtype"], desc="held_out"
            )
        with watch.time(f"{update}/oracle"):
            oracle, oracle_losses = domain_module(
                setup, train_updated, updated, params["oracle_seed"], f"fresh module on {update}"
            )
        with watch.time("prose_perplexity"):
            prose_after, _ = window_nll(updated, setup.prose_eval, desc=f"prose after the {update} update")
        updates[update] = UpdateArm(
            run=run, held_out=held_out_updated, oracle=oracle, prose_nll=prose_after, oracle_losses=oracle_losses
        )
        losses[f"{update}/oracle"] = oracle_losses
    return Trained(
        module=module,
        fresh=fresh,
        prose_nll_before=prose_before,
        prose_tokens=prose_tokens,
        updates=updates,
        losses=losses,
    )
