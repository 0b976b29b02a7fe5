"""Claim 2, arm training: the source modules, the native target modules, and every arm's calibration.

Per seed, every arm starts from the same source module (or, for ``random_module``, an untrained
one) and goes through the same Procrustes maps and KD recipe; only what the arm varies differs.
With ``zero_init_proj_out`` every module, trained or random, starts with a zero output projection,
i.e. as the bare backbone (see :mod:`abi.experiments.cross_architecture`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from abi.backbones import Backbone
from abi.checkpoints import load_module, save_module
from abi.experiments.common import frozen_domain_module, untrained_module
from abi.experiments.cross_architecture_setup import PairSetup
from abi.features import FeatureSet
from abi.kd_calibration import KDConfig, head_precision, kd_calibrate
from abi.module import ABIModule, ModuleConfig, count_parameters, parameter_hash
from abi.paths import cache_dir
from abi.train import module_corrections
from abi.transfer import fit_interface_maps, migrate_module

# Arms whose domain part must come out of the calibration bit-identical to the source module's.
FROZEN_DOMAIN_ARMS = ("migrated", "procrustes_only", "random_init_kd")


@dataclass
class PairArms:
    """Every trained module of one pair and the training records."""

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


def domain_module(
    setup: PairSetup, backbone: Backbone, features: FeatureSet, taps: tuple[int, ...], steps: int, seed: int, label: str
) -> tuple[ABIModule, list[float]]:
    """A new module trained by the domain stage on ``backbone``, then frozen; and its per-step losses."""
    module = new_module(setup.params, backbone.d_model, len(taps), seed)
    return frozen_domain_module(
        module,
        backbone,
        features,
        setup.params,
        steps,
        seed,
        label,
        head_dtype=head_precision(setup.params["head_dtype"]),
    )


def source_module_path(setup: PairSetup, seed: int, claim: str) -> Path:
    """Where a trained source module is kept: named by everything its weights depend on."""
    params = setup.params
    recipe = {
        k: params[k]
        for k in (
            "bottleneck",
            "expansion",
            "window_len",
            "train_split",
            "n_train_windows",
            "source_domain_steps",
            "domain_lr",
            "domain_batch_windows",
            "head_dtype",
            "zero_init_proj_out",
        )
    }
    digest = hashlib.sha256(
        json.dumps(
            {
                "recipe": recipe,
                "taps": list(setup.source_taps),
                "seed": seed,
                "backbone": setup.fingerprints_before["source"],
            }
        ).encode()
    ).hexdigest()[:12]
    return cache_dir() / "modules" / claim / f"{setup.source.name.replace('/', '_')}-seed{seed}-{digest}.safetensors"


def source_modules(setup: PairSetup, records: dict[str, Any], claim: str) -> dict[int, ABIModule]:
    """Train (or read) one source module per seed; every module goes through a module file and is read
    back with the declared source architecture checked (``expect_family``)."""
    params, family = setup.params, setup.source.spec.family
    sources = {}
    for i, seed in enumerate(params["seeds"]):
        if params["source_modules"]:
            path = Path(params["source_modules"][i])
        else:
            module, losses = domain_module(
                setup,
                setup.source,
                setup.source_train,
                setup.source_taps,
                params["source_domain_steps"],
                seed,
                f"source {setup.source.name} {seed}",
            )
            records["domain"][f"source/{seed}"] = losses
            path = save_module(
                source_module_path(setup, seed, claim),
                module,
                setup.source_taps,
                setup.source,
                extra={"claim": claim, "role": "source", "seed": seed},
            )
        module, record = load_module(path, backbone=setup.source, expect_family=family)
        module.requires_grad_(False)
        records["source_files"][str(seed)] = {
            "path": str(path),
            "parameter_sha256": record.parameter_sha256,
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


def train_pair(setup: PairSetup, claim: str) -> PairArms:
    """Source modules, native target modules, Procrustes maps, then every arm's calibration.

    ``claim`` names the folder and metadata of the source modules' files.
    """
    params, watch, target_d_model = setup.params, setup.watch, setup.target.d_model
    records: dict[str, Any] = {"domain": {}, "kd": {}, "source_files": {}, "domain_hash": {}}
    with watch.time("source_domain_stages"):
        sources = source_modules(setup, records, claim)
    with watch.time("native_domain_stages"):
        reference, records["domain"]["reference"] = domain_module(
            setup,
            setup.target,
            setup.target_train,
            setup.target_taps,
            params["native_domain_steps"],
            params["native_seed"],
            f"native {setup.target.name} (reference)",
        )
        ceiling, records["domain"]["ceiling"] = domain_module(
            setup,
            setup.target,
            setup.target_train,
            setup.target_taps,
            params["native_domain_steps"],
            params["ceiling_seed"],
            f"native {setup.target.name} (ceiling)",
        )
    maps = fit_interface_maps(*setup.pooled)
    records["procrustes"] = maps.describe()
    teacher = module_corrections(reference, setup.target_train)
    arms: dict[str, ABIModule] = {}
    with watch.time("kd_calibration"):
        for seed in params["seeds"]:
            source = sources[seed]
            untrained = new_module(params, source.config.d_model, source.config.n_taps, 10_000 + seed)
            random_interface = migrate_module(source, target_d_model, None, seed=20_000 + seed)
            if params["zero_init_proj_out"]:
                torch.nn.init.zeros_(random_interface.proj_out.weight)
            arms[f"procrustes_only/{seed}"] = migrate_module(source, target_d_model, maps)
            starts = {
                "migrated": (migrate_module(source, target_d_model, maps), "interface"),
                "random_module": (migrate_module(untrained, target_d_model, maps), "interface"),
                "random_init_kd": (random_interface, "interface"),
                "also_trained": (migrate_module(source, target_d_model, maps), "all"),
            }
            for arm, (module, train) in starts.items():
                log = kd_calibrate(
                    module,
                    teacher,
                    setup.target,
                    setup.target_train,
                    kd_config(params, train),
                    seed=seed,
                    desc=f"KD {arm} {seed}",
                )
                records["kd"][f"{arm}/{seed}"] = log.to_dict()
                arms[f"{arm}/{seed}"] = module
            source_domain = records["source_files"][str(seed)]["domain_sha256"]
            for arm in (*FROZEN_DOMAIN_ARMS, "also_trained"):
                records["domain_hash"][f"{arm}/{seed}"] = (
                    parameter_hash(arms[f"{arm}/{seed}"].domain_parameters()) == source_domain
                )
            if not all(records["domain_hash"][f"{arm}/{seed}"] for arm in FROZEN_DOMAIN_ARMS):
                raise RuntimeError(f"seed {seed}: a frozen domain part differs from its source module's.")
    records["module_parameters"] = {
        "migrated": count_parameters(arms[f"migrated/{params['seeds'][0]}"]),
        "interface": sum(t.numel() for t in reference.interface_parameters()),
    }
    records["correction_rms"] = correction_sizes(
        setup.target_train, {"reference": reference, "ceiling": ceiling, **arms}
    )
    return PairArms(reference=reference, ceiling=ceiling, sources=sources, arms=arms, records=records)


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
