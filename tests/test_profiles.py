"""Notebook parameters are checked up front, with messages that name the parameter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from abi.experiments import core_nib
from abi.notebook import THREADS_ENV, notebook_parameters, pin_torch_threads, start_run
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


# -- values papermill passes as text, and ranges every claim shares ---------------------------------------
def test_list_given_as_text_is_read_as_a_list() -> None:
    assert resolve_parameters("core_nib", "smoke", candidate_seeds="[1, 2, 3]")["candidate_seeds"] == [1, 2, 3]


def test_unreadable_text_names_the_parameter() -> None:
    with pytest.raises(ParameterError, match=r"parameter 'candidate_seeds': cannot read '\[1, 2'"):
        resolve_parameters("core_nib", "smoke", candidate_seeds="[1, 2")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"calibration_lr": -1e-3}, "'calibration_lr' of core_nib must be a finite number > 0"),
        ({"stat_windows": 0}, "'stat_windows' of core_nib must be at least 1"),
        ({"candidate_seeds": [1, 1]}, "'candidate_seeds' of core_nib must be a non-empty list without duplicates"),
        ({"eval_split": "dev"}, "'eval_split' of core_nib must be one of 'train', 'validation', 'test'"),
    ],
)
def test_out_of_range_values_are_named(overrides: dict, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        resolve_parameters("core_nib", "smoke", **overrides)


# -- a notebook's namespace as its parameters -------------------------------------------------------------
def test_notebook_parameters_are_the_plain_public_globals() -> None:
    namespace = {
        "profile": "smoke",
        "calibration_steps": 8,
        "backbone": None,
        "pd": pytest,
        "Path": Path,
        "start_run": start_run,
        "_": 3,
        "_i1": "profile = 'smoke'",
        "In": ["", "x = 1"],
        "Out": {1: 2},
    }
    assert notebook_parameters(namespace) == {"profile": "smoke", "calibration_steps": 8, "backbone": None}


def test_start_run_refuses_an_unknown_name(tmp_path: Path) -> None:
    namespace = {"profile": "smoke", "results_dir": str(tmp_path), "calibrtion_steps": 4}
    with pytest.raises(ParameterError, match="unknown parameter 'calibrtion_steps'"):
        start_run(core_nib.validate, namespace)


def test_start_run_refuses_a_results_dir_that_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "results.json"
    file.write_text("{}")
    with pytest.raises(ParameterError, match="is a file, not a folder"):
        start_run(core_nib.validate, {"profile": "smoke", "results_dir": str(file)})


def test_start_run_returns_the_parameters_and_the_folder(tmp_path: Path, torch_threads_restored) -> None:
    params, out_dir = start_run(
        core_nib.validate, {"profile": "smoke", "results_dir": str(tmp_path / "out"), "calibration_steps": 8}
    )
    assert params["calibration_steps"] == 8 and params["profile"] == "smoke"
    assert out_dir == tmp_path / "out" and (out_dir / "figures").is_dir()


@pytest.fixture
def torch_threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_claim_run_uses_the_thread_count_of_the_committed_results(monkeypatch, torch_threads_restored) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    torch.set_num_threads(2)
    assert pin_torch_threads() == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv(THREADS_ENV, "2")
    assert pin_torch_threads() == 2
    monkeypatch.setenv(THREADS_ENV, "0")  # torch's default: left as it is
    assert pin_torch_threads() == 2


@pytest.mark.parametrize("text", ["two", "-1"])
def test_a_thread_count_that_is_not_one_is_refused(monkeypatch, torch_threads_restored, text: str) -> None:
    monkeypatch.setenv(THREADS_ENV, text)
    with pytest.raises(ParameterError, match=f"{THREADS_ENV}='{text}' is not a thread count"):
        pin_torch_threads()
