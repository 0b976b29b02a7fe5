"""Saving and loading ABI modules with the facts needed to refuse a wrong use.

A module file is a safetensors file whose metadata records the module's shape, its taps and
the backbone it was trained on (name, family, width, number of layers, fingerprint). Loading
checks the file's integrity and, given a backbone, that the module fits it: a module made for
another width or tap range is refused with a message, never silently mis-applied. Writes go to
a temporary file that is renamed into place.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from abi.backbones import Backbone
from abi.module import ABIModule, ModuleConfig, parameter_hash

_FORMAT = "abi-module/1"


class CheckpointError(ValueError):
    """A module file that is missing, corrupted, or does not fit the backbone it is used with."""


@dataclass(frozen=True)
class ModuleRecord:
    """What a module file says about itself."""

    config: ModuleConfig
    taps: tuple[int, ...]
    backbone: dict[str, Any]
    seed: int
    parameter_sha256: str
    extra: dict[str, Any]


def backbone_facts(backbone: Backbone) -> dict[str, Any]:
    """The backbone facts a module depends on."""
    return {
        "name": backbone.name,
        "family": backbone.spec.family,
        "d_model": backbone.d_model,
        "n_layers": backbone.n_layers,
        "fingerprint": backbone.fingerprint(),
    }


def save_module(
    path: Path,
    module: ABIModule,
    taps: list[int] | tuple[int, ...],
    backbone: Backbone,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``module`` with its shape, taps and backbone facts; atomic (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(taps) != module.config.n_taps:
        raise CheckpointError(f"{len(taps)} taps given for a module built for {module.config.n_taps}.")
    metadata = {
        "format": _FORMAT,
        "config": json.dumps(module.config.to_dict()),
        "taps": json.dumps([int(t) for t in taps]),
        "backbone": json.dumps(backbone_facts(backbone)),
        "seed": str(module.seed),
        "parameter_sha256": parameter_hash(module),
        "extra": json.dumps(extra or {}),
    }
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read(path: Path) -> tuple[dict, dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: no such module file; train the module first or check the path.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({error}); it is truncated or corrupted: re-create it."
        ) from error
    if metadata.get("format") != _FORMAT:
        raise CheckpointError(
            f"{path}: format {metadata.get('format')!r}, expected {_FORMAT!r}; "
            "save it with abi.checkpoints.save_module."
        )
    return state, metadata


def load_module(
    path: Path, backbone: Backbone | None = None, expect_family: str | None = None
) -> tuple[ABIModule, ModuleRecord]:
    """Read a module file, check its integrity, and (given a backbone) that it fits that backbone."""
    path = Path(path)
    state, metadata = _read(path)
    try:
        config = ModuleConfig(**json.loads(metadata["config"]))
        record = ModuleRecord(
            config,
            tuple(json.loads(metadata["taps"])),
            json.loads(metadata["backbone"]),
            int(metadata["seed"]),
            metadata["parameter_sha256"],
            json.loads(metadata["extra"]),
        )
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: metadata field missing or malformed ({error}); re-create the file.") from error
    module = ABIModule(config, seed=record.seed)
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: tensors do not match the recorded module shape ({error}).") from error
    if parameter_hash(module) != record.parameter_sha256:
        raise CheckpointError(f"{path}: parameter hash differs from the recorded one; the file is corrupted.")
    if expect_family is not None and record.backbone.get("family") != expect_family:
        raise CheckpointError(
            f"{path}: the module was trained on a {record.backbone.get('family')!r} backbone "
            f"({record.backbone.get('name')}), not on {expect_family!r} as declared; pass the right module file."
        )
    if backbone is not None:
        check_fits(record, backbone, source=str(path))
    module.eval()
    return module, record


def check_fits(record: ModuleRecord, backbone: Backbone, source: str = "<module>") -> None:
    """Refuse a module whose width or taps do not exist on ``backbone`` (before any work)."""
    if record.config.d_model != backbone.d_model:
        raise CheckpointError(
            f"{source}: the module reads d_model={record.config.d_model} hidden states "
            f"({record.backbone.get('name')}), but {backbone.name!r} has d_model={backbone.d_model}; "
            "migrate it with abi.transfer instead of applying it directly."
        )
    bad = [t for t in record.taps if not 1 <= t <= backbone.n_layers]
    if bad:
        raise CheckpointError(
            f"{source}: taps {bad} do not exist on {backbone.name!r} (layers 1..{backbone.n_layers})."
        )
