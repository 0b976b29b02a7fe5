"""Notebook parameters are checked up front, with messages that name the parameter."""

from __future__ import annotations

import pytest

from abi.profiles import ParameterError, resolve_parameters


def test_profile_defaults_and_override() -> None:
    params = resolve_parameters("core_nib", "smoke", calibration_steps=12, candidate_seeds=(4, 5))
    assert params["backbone"] == "tiny-llama"
    assert params["calibration_steps"] == 12
    assert params["candidate_seeds"] == [4, 5]
    assert params["profile"] == "smoke"


def test_none_means_profile_value() -> None:
    assert resolve_parameters("core_nib", "cpu", backbone=None)["backbone"] == "smollm2-135m"


def test_int_accepted_for_float() -> None:
    assert resolve_parameters("core_nib", "cpu", calibration_lr=1)["calibration_lr"] == 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"calibration_steps": "400"}, "calibration_steps"),
        ({"candidate_seeds": [1, "2"]}, "candidate_seeds"),
        ({"anchor_per_tap_norm": 1}, "anchor_per_tap_norm"),
        ({"calibrtion_steps": 4}, "unknown parameter 'calibrtion_steps'"),
    ],
)
def test_bad_parameters_are_named(overrides: dict, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        resolve_parameters("core_nib", "cpu", **overrides)


def test_unknown_profile_lists_known() -> None:
    with pytest.raises(ParameterError, match="known profiles: smoke, cpu, paper"):
        resolve_parameters("core_nib", "gpu")
