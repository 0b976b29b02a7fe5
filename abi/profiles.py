"""Profiles: named sets of notebook parameters. The code path is the same for all of them.

* ``smoke``: tiny random-weight models; the whole pipeline in a minute or two (tests, CI).
* ``cpu`` (default): real pretrained models that install offline, sized for 2 CPU cores.
* ``paper``: the seed's models and sizes; needs a GPU and the model hub.

Notebook parameter cells hold ``None`` for "the profile's value"; :func:`resolve_parameters`
merges, type-checks and rejects unknown names before any work starts.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

_CORE_NIB_CPU: dict[str, Any] = {
    "backbone": "smollm2-135m",
    "anchor_taps": [30],
    "anchor_bottleneck": 256,
    "anchor_per_tap_norm": False,
    "candidate_taps": [25, 26, 27, 28, 29, 30],
    "candidate_bottleneck": 512,
    "expansion": 4,
    "split_level": "file",
    "eval_split": "test",
    "window_len": 128,
    "n_train_windows": 256,
    "domain_steps": 80,
    "domain_lr": 3e-4,
    "domain_batch_windows": 4,
    "calibration_steps": 400,
    "calibration_lr": 5e-3,
    "calibration_batch_windows": 8,
    "anchor_seed": 0,
    "ceiling_seed": 100,
    "candidate_seeds": [1, 2, 3],
    "protocol": "faq",
    "stat_windows": 128,
    "stat_window_len": 128,
    "curve_every": 50,
    "curve_windows": 8,
    "ni_margin": 0.02,
    "bootstrap_resamples": 2000,
    "feature_dtype": "float32",
}

PROFILES: Mapping[str, Mapping[str, Mapping[str, Any]]] = MappingProxyType(
    {
        "core_nib": {
            "cpu": _CORE_NIB_CPU,
            "smoke": {
                **_CORE_NIB_CPU,
                "backbone": "tiny-llama",
                "anchor_taps": [4],
                "anchor_bottleneck": 32,
                "candidate_taps": [3, 4],
                "candidate_bottleneck": 64,
                "window_len": 64,
                "n_train_windows": 32,
                "domain_steps": 10,
                "calibration_steps": 40,
                "candidate_seeds": [1, 2],
                "stat_windows": 16,
                "stat_window_len": 64,
                "curve_every": 10,
                "curve_windows": 4,
                "bootstrap_resamples": 500,
            },
            "paper": {
                **_CORE_NIB_CPU,
                "backbone": "t5-large",
                "anchor_taps": [24],
                "anchor_bottleneck": 512,
                "candidate_taps": [19, 20, 21, 22, 23, 24],
                "candidate_bottleneck": 4096,
                "n_train_windows": 4000,
                "domain_steps": 2000,
                "domain_batch_windows": 2,
                "calibration_steps": 16000,
                "calibration_batch_windows": 8,
                "protocol": "t5-prefix",
                "stat_windows": 500,
                "curve_every": 500,
                "curve_windows": 32,
            },
        }
    }
)

DEFAULT_PROFILE = "cpu"


class ParameterError(ValueError):
    """A notebook parameter that is unknown, of the wrong type, or an unknown profile."""


def _type_ok(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, list):
        return isinstance(value, (list, tuple)) and all(_type_ok(v, default[0]) for v in value) if default else True
    return isinstance(value, type(default))


def resolve_parameters(claim: str, profile: str = DEFAULT_PROFILE, **overrides: Any) -> dict[str, Any]:
    """The profile's parameters with non-``None`` overrides applied, all checked up front."""
    if claim not in PROFILES:
        raise ParameterError(f"unknown claim {claim!r}; known: {', '.join(PROFILES)}.")
    profiles = PROFILES[claim]
    if profile not in profiles:
        raise ParameterError(f"unknown profile {profile!r} for {claim}; known profiles: {', '.join(profiles)}.")
    params = copy.deepcopy(dict(profiles[profile]))
    for name, value in overrides.items():
        if value is None:
            continue
        if name not in params:
            raise ParameterError(f"unknown parameter {name!r} for {claim}; known parameters: {', '.join(params)}.")
        default = params[name]
        if not _type_ok(value, default):
            raise ParameterError(
                f"parameter {name!r} must be of type {type(default).__name__} like the profile value "
                f"{default!r}, got {value!r} ({type(value).__name__})."
            )
        params[name] = float(value) if isinstance(default, float) else list(value) if isinstance(value, tuple) else value
    params["profile"] = profile
    return params
