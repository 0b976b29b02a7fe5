"""Backbones for benchmarks: the real offline model, or a random-weight model of the same shape.

Timings do not depend on weight values, so a machine without the offline packages (the lent GPU
machine, which reaches no registry) measures a model of SmolLM2's exact architecture built from
its config with random weights (``shape_only``); the result file records which was used.
"""

from __future__ import annotations

import json

import torch

from abi.backbones import Backbone, BackboneUnavailableError, load_backbone, resolve_backbone
from abi.paths import REPO_ROOT
from benchmarks.common import PrerequisiteError

# Configs of the offline models, committed so a shape-only model needs no package (a few KB).
CONFIG_DIR = REPO_ROOT / "benchmarks" / "configs"


def benchmark_backbone(name: str, device: str = "cpu", shape_only: bool = False) -> Backbone:
    """The frozen backbone to time, moved to ``device``."""
    if shape_only:
        return _shape_only(name, device)
    try:
        backbone = load_backbone(name)
    except BackboneUnavailableError as error:
        raise PrerequisiteError(
            f"{error}\nRun `make setup` first (it installs and caches the offline models), "
            "or pass --shape-only to time a random-weight model of the same shape."
        ) from None
    backbone.model.to(device)
    return backbone


def _shape_only(name: str, device: str) -> Backbone:
    from transformers import AutoConfig, AutoModelForCausalLM

    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
        raise PrerequisiteError(f"no committed config for {name!r} under {CONFIG_DIR}; known: {known}.")
    config_dict = json.loads(path.read_text())
    config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    spec = resolve_backbone(name)
    return Backbone(spec, model.to(device), tokenizer=None, identity={"source": "shape-only", "config": path.name})
