"""Claim 2, arm training: the source modules, the native target modules, and every arm's calibration.

Per seed, every KD arm starts from the same source module (or, for ``random_module``, an untrained
one) and goes through the same Procrustes maps and KD recipe; only what the arm varies differs.

Fair starts (``kd_start``). With ``"zero_proj_out"`` every KD arm's output projection is zeroed after
its interface is built, so every arm starts KD exactly at the bare target (same KD loss at step 0) and
only what ``proj_in`` and the frozen domain part carry differs; with ``"procrustes"`` the mapped
output projection is kept (the release's start). Each arm's KD loss at step 0 is recorded either way.

Domain stages and KD both stop when their validation loss plateaus (:class:`abi.train.PlateauRule`,
at most ``domain_steps`` / ``kd_steps`` steps) and restore the best evaluated state. Trained source
and native modules are kept as module files named by everything their weights depend on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from abi.backbones import Backbone
from abi.checkpoints import load_module, save_module
from abi.experiments.common import untrained_module
from abi.experiments.cross_architecture_setup import SettingSetup
from abi.features import FeatureSet
from abi.kd_calibration import KDConfig, KDValidation, head_precision, kd_calibrate
from abi.module import ABIModule, ModuleConfig, count_parameters, parameter_hash
from abi.module_store import code_digest, state_digest, trained
from abi.paths import cache_dir
from abi.train import PlateauRule, module_corrections, train_domain_stage
from abi.transfer import fit_interface_maps, migrate_module

# Arms whose domain part must come out of the calibration bit-identical to the source module's.
FROZEN_DOMAIN_ARMS = ("migrated", "procrustes_only", "random_init_kd")
KD_ARMS = ("migrated", "random_module", "random_init_kd", "also_trained")
KD_STARTS = ("zero_proj_out", "procrustes")
_MODULE_FORMAT = 2  # 2: domain (or dialect), plateau rule, validation windows


@dataclass
class SettingArms:
    """Every trained module of one setting and the training records."""

    reference: ABIModule
    ceiling: ABIModule
    sources: dict[int, ABIModule]
    arms: dict[str, ABIModule]  # "arm/seed" -> module on T
    records: dict[str, Any]


def new_module(params: dict[str, Any], d_model: int, n_taps: int, seed: int) -> ABIModule:
    """An untrained module as every module of this claim starts: 1-tap style (no per-tap LayerNorm),
    output projection at zero with ``zero_init_proj_out``."""
    config = ModuleConfig(
        d_model=d_model,
        n_taps=n_taps,
        bottleneck=params["bottleneck"],
        expansion=params["expansion"],
        per_tap_norm=False,
    )
    return untrained_module(config, seed, params["zero_init_proj_out"])


def domain_rule(params: dict[str, Any]) -> PlateauRule:
    """The domain stages' stopping rule (validation loss every ``domain_eval_every`` steps)."""
    return PlateauRule(params["domain_eval_every"], params["domain_patience"], params["domain_min_delta"])


def kd_rule(params: dict[str, Any]) -> PlateauRule:
    """KD's stopping rule (validation KD loss every ``kd_eval_every`` steps)."""
    return PlateauRule(params["kd_eval_every"], params["kd_patience"], params["kd_min_delta"])


_RECIPE = (
    "bottleneck",
    "expansion",
    "window_len",
    "train_split",
    "n_train_windows",
    "val_windows",
    "domain_steps",
    "domain_eval_every",
    "domain_patience",
    "domain_min_delta",
    "domain_lr",
    "domain_batch_windows",
    "head_dtype",
    "zero_init_proj_out",
    "split_level",
    "dialect_words",
    "dialect_seed",
    "protocol",
)


def module_path(setup: SettingSetup, side: str, seed: int, claim: str) -> Path:
    """Where a trained domain module is kept: named by everything its weights depend on."""
    backbone = setup.source if side == "source" else setup.target
    taps = setup.source_taps if side == "source" else setup.target_taps
    recipe = {k: setup.params[k] for k in _RECIPE}
    identity = {
        "format": _MODULE_FORMAT,
        "recipe": recipe,
        "domain": setup.domain,
        "taps": list(taps),
        "seed": seed,
        "backbone": setup.fingerprints_before[side],
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    name = f"{backbone.name.replace('/', '_')}-{setup.domain}-seed{seed}-{digest}.safetensors"
    return cache_dir() / "modules" / claim / name


def domain_module(setup: SettingSetup, side: str, seed: int, claim: str) -> tuple[ABIModule, Path, dict[str, Any]]:
    """A module trained by the domain stage on the ``side`` model (read back from its file when kept),
    frozen; its file and its training log (per-step losses, evaluations, best step)."""
    params = setup.params
    backbone: Backbone = setup.source if side == "source" else setup.target
    taps = setup.source_taps if side == "source" else setup.target_taps
    path = module_path(setup, side, seed, claim)
    if not path.is_file():
        module = new_module(params, backbone.d_model, len(taps), seed)
        log = train_domain_stage(
            module,
            backbone,
            setup.features[f"{side}_train"],
            params["domain_steps"],
            lr=params["domain_lr"],
            batch_windows=params["domain_batch_windows"],
            seed=seed,
            desc=f"{setup.key}: domain stage, {side} {backbone.name} {seed}",
            validation=setup.features[f"{side}_val"],
            plateau=domain_rule(params),
            head_dtype=head_precision(params["head_dtype"]),
        )
        record = {"losses": log.losses, "evaluations": log.evaluations, "best_step": log.best_step}
        save_module(path, module, taps, backbone, extra={"claim": claim, "side": side, "seed": seed, "log": record})
    module, stored = load_module(path, backbone=backbone, expect_family=backbone.spec.family)
    module.requires_grad_(False)
    log = {**stored.extra["log"], "steps_run": len(stored.extra["log"]["losses"]), "file": path.name}
    return module, path, log


def source_modules(setup: SettingSetup, records: dict[str, Any], claim: str) -> dict[int, ABIModule]:
    """One source module per seed (trained, or the files given in ``source_modules``); every module is
    read back from its file with the declared source architecture checked (``expect_family``)."""
    params, family = setup.params, setup.source.spec.family
    sources = {}
    for i, seed in enumerate(params["seeds"]):
        if params["source_modules"]:
            path = Path(params["source_modules"][i])
            module, _ = load_module(path, backbone=setup.source, expect_family=family)
            module.requires_grad_(False)
        else:
            module, path, records["domain"][f"source/{seed}"] = domain_module(setup, "source", seed, claim)
        records["source_files"][str(seed)] = {
            "path": path.name,
            "parameter_sha256": parameter_hash(module),
            "domain_sha256": parameter_hash(module.domain_parameters()),
        }
        sources[seed] = module
    return sources


def kd_config(params: dict[str, Any], train: str = "interface") -> KDConfig:
    """The KD recipe of every calibrated arm; ``train="all"`` for the arm that trains every weight."""
    return KDConfig(
        steps=params["kd_steps"],
        lr=params["kd_lr"],
        positions=params["kd_positions"],
        temperature=params["kd_temperature"],
        kl_weight=params["kd_weight"],
        ce_weight=params["ce_weight"],
        head_dtype=params["head_dtype"],
        train=train,
    )


def _kd_starts(params: dict[str, Any], source: ABIModule, maps: Any, d_model: int, seed: int) -> dict[str, tuple]:
    """Each KD arm's module before KD and what KD trains; with ``kd_start="zero_proj_out"`` every
    start's output projection is zeroed (every arm starts at the bare target)."""
    untrained = new_module(params, source.config.d_model, source.config.n_taps, 10_000 + seed)
    candidates = {
        "migrated": (lambda: migrate_module(source, d_model, maps), "interface"),
        "random_module": (lambda: migrate_module(untrained, d_model, maps), "interface"),
        "random_init_kd": (lambda: migrate_module(source, d_model, None, seed=20_000 + seed), "interface"),
        "also_trained": (lambda: migrate_module(source, d_model, maps), "all"),
    }
    starts = {}
    for arm in (a for a in KD_ARMS if a in params["arms"]):
        build, train = candidates[arm]
        module = build()
        if params["kd_start"] == "zero_proj_out" or (arm == "random_init_kd" and params["zero_init_proj_out"]):
            torch.nn.init.zeros_(module.proj_out.weight)
        starts[arm] = (module, train)
    return starts


def kd_stored(
    setup: SettingSetup,
    module: ABIModule,
    reference: ABIModule,
    teacher: torch.Tensor,
    validation: KDValidation,
    config: KDConfig,
    seed: int,
    label: str,
) -> dict[str, Any]:
    """KD-calibrate ``module`` in place towards ``reference``'s corrections (``teacher``, on the target's
    training windows) and return the log; read from the module store (:mod:`abi.module_store`) when the
    same calibration ran before. The start (migrated, random or re-initialised module) is in the key by
    its weights, the teacher by the reference module's."""
    params, train = setup.params, setup.features["target_train"]
    identity = {
        "target": setup.fingerprints_before["target"],
        "correction_site": setup.target.correction_site,
        "taps": list(setup.target_taps),
        "train_windows": train.windows.content_hash(),
        "validation_windows": validation.features.windows.content_hash(),
        "teacher": state_digest(reference),
        "config": dataclasses.asdict(config),
        "rule": validation.rule.to_dict(),
        "feature_dtype": params["feature_dtype"],
        "seed": seed,
    }

    def run() -> dict[str, Any]:
        log = kd_calibrate(
            module, teacher, setup.target, train, config, seed=seed, desc=f"{setup.key}: {label}", validation=validation
        )
        return log.to_dict()

    return trained("kd", f"{setup.key}-{label}", module, identity, code_digest(__name__), run)


def train_setting(setup: SettingSetup, claim: str) -> SettingArms:
    """Source modules, native target modules, Procrustes maps, then every arm's KD calibration.

    ``claim`` names the folder and metadata of the module files.
    """
    params, watch, target_d_model = setup.params, setup.watch, setup.target.d_model
    records: dict[str, Any] = {"domain": {}, "kd": {}, "source_files": {}, "domain_hash": {}}
    with watch.time("source_domain_stages"):
        sources = source_modules(setup, records, claim)
    with watch.time("native_domain_stages"):
        reference, _, records["domain"]["reference"] = domain_module(setup, "target", params["native_seed"], claim)
        ceiling, _, records["domain"]["ceiling"] = domain_module(setup, "target", params["ceiling_seed"], claim)
    maps = fit_interface_maps(*setup.pooled)
    records["procrustes"] = maps.describe()
    train, val = setup.features["target_train"], setup.features["target_val"]
    teacher = module_corrections(reference, train)
    validation = KDValidation(val, module_corrections(reference, val), kd_rule(params))
    arms: dict[str, ABIModule] = {}
    with watch.time("kd_calibration"):
        for seed in params["seeds"]:
            source = sources[seed]
            if "procrustes_only" in params["arms"]:
                arms[f"procrustes_only/{seed}"] = migrate_module(source, target_d_model, maps)
            for arm, (module, trains) in _kd_starts(params, source, maps, target_d_model, seed).items():
                config = kd_config(params, trains)
                records["kd"][f"{arm}/{seed}"] = kd_stored(
                    setup, module, reference, teacher, validation, config, seed, f"KD {arm} {seed}"
                )
                arms[f"{arm}/{seed}"] = module
            source_domain = records["source_files"][str(seed)]["domain_sha256"]
            for name in (n for n in arms if n.endswith(f"/{seed}")):
                records["domain_hash"][name] = parameter_hash(arms[name].domain_parameters()) == source_domain
            if not all(records["domain_hash"].get(f"{arm}/{seed}", True) for arm in FROZEN_DOMAIN_ARMS):
                raise RuntimeError(f"seed {seed}: a frozen domain part differs from its source module's.")
    records["kd_rule"] = kd_rule(params).to_dict()
    records["domain_rule"] = domain_rule(params).to_dict()
    records["module_parameters"] = {
        "migrated": count_parameters(sources[params["seeds"][0]]),
        "interface": sum(t.numel() for t in reference.interface_parameters()),
    }
    records["correction_rms"] = correction_sizes(train, {"reference": reference, "ceiling": ceiling, **arms})
    return SettingArms(reference=reference, ceiling=ceiling, sources=sources, arms=arms, records=records)


@torch.no_grad()
def correction_sizes(features: FeatureSet, modules: dict[str, ABIModule]) -> dict[str, float]:
    """Root-mean-square length of each module's correction over the cached positions (and of the
    final hidden state itself, ``final``): shows whether an initialisation writes corrections of
    the native module's size or far larger ones."""
    sums = dict.fromkeys(["final", *modules], 0.0)
    count = 0
    for _, taps, final, _ in features.iter_batches(16):
        sums["final"] += float(final.pow(2).sum(-1).sum())
        for name, module in modules.items():
            sums[name] += float(module(taps).pow(2).sum(-1).sum())
        count += final.shape[0] * final.shape[1]
    return {name: (total / count) ** 0.5 for name, total in sums.items()}
