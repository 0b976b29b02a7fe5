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
from abi.module_store import code_digest, trained


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
    """A new module trained by the domain stage on ``backbone``, then frozen; and its per-step losses.
    Read from the module store (:mod:`abi.module_store`) when the same stage ran before; whether it was,
    and what training it cost, is noted in ``setup.stored_modules`` under ``label``."""
    params = setup.params
    config = ModuleConfig(
        d_model=backbone.d_model,
        n_taps=len(setup.shared.taps),
        bottleneck=params["bottleneck"],
        expansion=params["expansion"],
    )
    module = untrained_module(config, seed, params["zero_init_proj_out"])
    identity = {
        "backbone": backbone.fingerprint(),
        "correction_site": backbone.correction_site,
        "taps": list(setup.shared.taps),
        "windows": features.windows.content_hash(),
        "feature_dtype": params["feature_dtype"],
        "steps": params["domain_steps"],
        "lr": params["domain_lr"],
        "batch_windows": params["domain_batch_windows"],
        "seed": seed,
    }

    def train() -> dict[str, list[float]]:
        _, losses = frozen_domain_module(
            module, backbone, features, params, params["domain_steps"], seed, f"{setup.setting}: {label}"
        )
        return {"losses": losses}

    log = trained("domain", f"invariance-{setup.setting}-{label}", module, identity, code_digest(__name__), train)
    module.requires_grad_(False)
    setup.stored_modules[label] = {"from_cache": log["from_cache"], "stage_s": log["stage_s"]}
    return module, log["losses"]


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
