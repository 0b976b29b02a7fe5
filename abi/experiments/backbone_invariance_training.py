"""Claim 4, training: modules on B (the module seeds and the original's oracle), the protected updates
(the release's stability term needs the module, so they are made per module seed), the refusal rule for
a zero-shot application, and our oracle (a fresh module on each B').
"""

from __future__ import annotations

from abi.backbones import Backbone
from abi.checkpoints import CheckpointError, ModuleRecord, backbone_facts, check_fits
from abi.experiments.backbone_invariance_setup import Setup, finetune_config
from abi.experiments.common import frozen_domain_module, untrained_module
from abi.features import FeatureSet
from abi.finetune import FinetuneRun, finetune_backbone
from abi.module import ABIModule, ModuleConfig, parameter_hash


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
def domain_module(
    setup: Setup, features: FeatureSet, backbone: Backbone, seed: int, label: str
) -> tuple[ABIModule, list[float]]:
    """A new module trained by the domain stage on ``backbone``, then frozen; and its per-step losses."""
    params = setup.params
    config = ModuleConfig(
        d_model=backbone.d_model,
        n_taps=len(setup.shared.taps),
        bottleneck=params["bottleneck"],
        expansion=params["expansion"],
    )
    module = untrained_module(config, seed, params["zero_init_proj_out"])
    return frozen_domain_module(
        module, backbone, features, params, params["domain_steps"], seed, f"{setup.setting}: {label}"
    )


def protected_update(setup: Setup, module: ABIModule, update_seed: int, module_seed: int) -> FinetuneRun:
    """B fine-tuned on prose with the release's stability term on ``module``'s hidden state (module frozen)."""
    shared = setup.shared
    config = finetune_config(setup.params, "protected", update_seed, shared.taps, parameter_hash(module))
    return finetune_backbone(
        shared.backbone,
        shared.prose_train,
        config,
        data=shared.prose.identity,
        checkpoint_every=setup.params["checkpoint_every"],
        desc=f"{setup.setting}: protected update, seed {update_seed}, module {module_seed}",
        protect_module=module,
    )
