"""Domain-trained modules kept on disk, so claims that share claim 1's anchor and candidates train them once.

A module's domain stage depends only on its shape, its seed, the domain-stage hyper-parameters, the
frozen backbone, the training and stopping-rule windows, and the code that trains it. The key hashes
all of these (the windows by their content hash, the backbone by its weight fingerprint, the code by
the source of every library file the domain stage can reach), so a kept module is reused only where
retraining it would give the same module. Used by claim 3; claim 1 can use it the same way
(:func:`domain_trained` in place of ``make_module`` + ``run_domain_stage``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from abi.experiments import core_nib
from abi.experiments.common import TappedModule
from abi.paths import cache_dir

# Parameters the domain stage reads (besides the module's shape and seed).
DOMAIN_KEYS = (
    "backbone",
    "expansion",
    "proj_out_init",
    "domain_steps",
    "domain_lr",
    "domain_batch_windows",
    "domain_head_dtype",
    "domain_eval_every",
    "domain_patience",
    "domain_min_delta",
    "feature_dtype",
)
SHAPE_KEYS = {
    "anchor": ("anchor_taps", "anchor_bottleneck", "anchor_per_tap_norm"),
    "candidate": ("candidate_taps", "candidate_bottleneck"),
}
# Library code that cannot change a domain stage: reports, figures, other claims, statistics, objectives.
_UNRELATED_DIRS = ("reports", "plotting")
_KEPT_EXPERIMENTS = ("__init__.py", "common.py", "core_nib.py")
_UNRELATED_FILES = ("objectives.py", "verify.py", "verdicts.py", "domain_cache.py", "cli.py", "pipeline.py")


def code_digest() -> str:
    """sha256 over the library files a domain stage can depend on."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] in _UNRELATED_DIRS or path.name in _UNRELATED_FILES:
            continue
        if relative.parts[0] == "experiments" and path.name not in _KEPT_EXPERIMENTS:
            continue
        digest.update(f"{relative}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def module_key(setup: core_nib.Setup, role: str, seed: int) -> str:
    """What determines a domain-trained module, hashed."""
    params = setup.params
    identity = {
        "setting": setup.setting,
        "role": role,
        "seed": seed,
        "params": {k: params[k] for k in (*DOMAIN_KEYS, *SHAPE_KEYS[role])},
        "backbone": setup.fingerprint_before,
        "train_windows": setup.train.windows.content_hash(),
        "validation_windows": setup.domain_val.windows.content_hash(),
        "feature_taps": list(setup.feature_taps),
        "code": code_digest(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]


def module_path(setup: core_nib.Setup, role: str, seed: int) -> Path:
    return cache_dir() / "modules" / f"{role}-{seed}-{module_key(setup, role, seed)}.pt"


def domain_trained(setup: core_nib.Setup, role: str, seed: int, label: str) -> tuple[TappedModule, dict[str, Any]]:
    """A module of ``role``'s shape after its domain stage, and the stage's log: read from the cache when
    the same module was trained before (by any claim), else trained with claim 1's functions and kept."""
    module = core_nib.make_module(setup, role, seed)
    path = module_path(setup, role, seed)
    if path.is_file():
        try:
            kept = torch.load(path, map_location="cpu", weights_only=False)
            module.load_state_dict(kept["state_dict"])
            module.eval()
            print(f"{setup.setting}: {label}: domain-trained module read from the cache ({path.name})")
            return module, {**kept["log"], "from_cache": True}
        except (OSError, RuntimeError, KeyError, ValueError) as error:
            print(f"{setup.setting}: {label}: cached module {path.name} unreadable ({error}); training it again")
    log = core_nib.run_domain_stage(setup, module, seed, label)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    torch.save({"state_dict": module.state_dict(), "log": log}, partial)
    partial.replace(path)
    return module, {**log, "from_cache": False}
