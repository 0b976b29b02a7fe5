"""Profiles: named sets of notebook parameters. The code path is the same for all of them.

* ``smoke``: tiny random-weight models; the whole pipeline in a minute or two (tests, CI).
* ``cpu`` (default): real pretrained models that install offline, sized for 2 CPU cores.
* ``paper``: the release's models and sizes; needs a GPU and the model hub.

Notebook parameter cells hold ``None`` for "the profile's value"; :func:`resolve_parameters`
merges, type-checks and rejects unknown names before any work starts.
"""

from __future__ import annotations

import ast
import copy
import math
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
    """The registered profiles of one claim (importing a claim's module registers them; profiles never import
    claims, so a claim's notebook depends on its own claim's code only)."""
    if claim not in _PROFILES:
        raise ParameterError(
            f"unknown claim {claim!r}, or its module is not imported yet (import abi.experiments.{claim}, or "
            f"abi.claims.claim_modules() for every claim); registered: {', '.join(sorted(_PROFILES)) or 'none'}."
        )
    return _PROFILES[claim]


def check_profile(profile: str) -> str:
    """Reject an unknown profile name before any work, listing the known ones."""
    if profile not in PROFILE_NAMES:
        raise ParameterError(f"unknown profile {profile!r}; known profiles: {', '.join(PROFILE_NAMES)}.")
    return profile


def type_matches(value: Any, default: Any) -> bool:
    """True when ``value`` has the type of the profile's ``default`` (an int is accepted for a float)."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, list):
        return isinstance(value, (list, tuple)) and all(type_matches(v, default[0]) for v in value) if default else True
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
        value = _parse_text(name, value, default)
        if not type_matches(value, default):
            raise ParameterError(
                f"parameter {name!r} must be of type {type(default).__name__} like the profile value "
                f"{default!r}, got {value!r} ({type(value).__name__})."
            )
        if isinstance(default, float):
            value = float(value)
        params[name] = list(value) if isinstance(value, tuple) else value
    check_ranges(claim, params)
    from abi.backbones.limits import backbone_names, check_windows_fit, window_parameters

    check_windows_fit(backbone_names(params), window_parameters(params))
    params["profile"] = profile
    return params


def _parse_text(name: str, value: Any, default: Any) -> Any:
    """papermill's ``-p name "[1, 2]"`` passes list values as text: read them as Python literals."""
    if not (isinstance(value, str) and isinstance(default, (list, dict))):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError) as error:
        raise ParameterError(
            f"parameter {name!r}: cannot read {value!r} as a {type(default).__name__} like {default!r} "
            f'(write it as a Python literal, e.g. -p {name} "{default!r}", or pass YAML with -y).'
        ) from error


# Range rules by parameter name, one home for every claim: (test on the name, test on the value, what it needs).
_OPTIONAL_STEPS = ("_warmup_steps", "_probe_steps")  # 0 means "none": no warm-up, no probe
_COUNT_SUFFIXES = ("_steps", "_windows", "_bottleneck", "_len", "_resamples", "_positions")
_RANGE_RULES: tuple[tuple[Any, Any, str], ...] = (
    (lambda n: n == "lr" or n.endswith("_lr"), lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    (lambda n: n.endswith(_OPTIONAL_STEPS), lambda v: v >= 0, "at least 0"),
    (
        lambda n: (
            (n.startswith("n_") or n.endswith(_COUNT_SUFFIXES) or n in ("bottleneck", "expansion"))
            and not n.endswith(_OPTIONAL_STEPS)
        ),
        lambda v: v >= 1,
        "at least 1",
    ),
    (
        lambda n: n == "seeds" or n.endswith("_seeds"),
        lambda v: isinstance(v, list) and len(v) > 0 and len(set(v)) == len(v),
        "a non-empty list without duplicates (a repeated seed would be trained once)",
    ),
    (
        lambda n: n == "taps" or n.endswith("_taps"),
        lambda v: not isinstance(v, list) or len(set(v)) == len(v),
        "a list without duplicates",
    ),
    (
        lambda n: n.endswith("lr_grid"),
        lambda v: len(v) > 0 and all(math.isfinite(x) and x > 0 for x in v),
        "a non-empty list of finite numbers > 0",
    ),
    (
        lambda n: n.endswith("_split"),
        lambda v: v in ("train", "validation", "test"),
        "one of 'train', 'validation', 'test'",
    ),
    (lambda n: n.endswith(("_margin", "_weight")), lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
)


def check_ranges(claim: str, params: Mapping[str, Any]) -> None:
    """Refuse out-of-range values (a negative LR, zero windows, duplicate seeds) before any work.

    The rules go by the parameter's name, so a new parameter named like the others is checked too.
    """
    for name, value in params.items():
        if value is None or isinstance(value, bool):
            continue
        for applies, valid, needs in _RANGE_RULES:
            if applies(name) and not _holds(valid, value):
                raise ParameterError(f"parameter {name!r} of {claim} must be {needs}, got {value!r}.")


def _holds(valid: Any, value: Any) -> bool:
    """A rule on a value of another type (a text protocol name for a ``_len`` rule) does not apply."""
    try:
        return bool(valid(value))
    except TypeError:
        return True
