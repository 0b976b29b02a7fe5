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

PROFILE_NAMES = ("smoke", "cpu", "paper")
DEFAULT_PROFILE = "cpu"

_PROFILES: dict[str, dict[str, Mapping[str, Any]]] = {}


class ParameterError(ValueError):
    """A notebook parameter that is unknown, of the wrong type, or an unknown profile."""


def register_profiles(claim: str, profiles: Mapping[str, Mapping[str, Any]]) -> None:
    """Register a claim's profiles; each claim module owns its own (every profile must exist)."""
    missing = [name for name in PROFILE_NAMES if name not in profiles]
    if missing:
        raise ValueError(f"claim {claim!r} must define the profiles {list(PROFILE_NAMES)}; missing {missing}.")
    _PROFILES[claim] = {name: MappingProxyType(dict(values)) for name, values in profiles.items()}


def claim_profiles(claim: str) -> dict[str, Mapping[str, Any]]:
    """The registered profiles of one claim (importing every claim module registers them all)."""
    if claim not in _PROFILES:
        import abi.experiments  # noqa: F401  (each claim module registers its profiles on import)
    if claim not in _PROFILES:
        raise ParameterError(f"unknown claim {claim!r}; known: {', '.join(sorted(_PROFILES))}.")
    return _PROFILES[claim]


def check_profile(profile: str) -> str:
    """Reject an unknown profile name before any work, listing the known ones."""
    if profile not in PROFILE_NAMES:
        raise ParameterError(f"unknown profile {profile!r}; known profiles: {', '.join(PROFILE_NAMES)}.")
    return profile


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
    profiles = claim_profiles(claim)
    check_profile(profile)
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
        if isinstance(default, float):
            value = float(value)
        params[name] = list(value) if isinstance(value, tuple) else value
    params["profile"] = profile
    return params
