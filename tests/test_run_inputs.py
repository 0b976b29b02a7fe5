"""A run is refused before any model loads when a window is too long or the output folder is unusable,
and a misspelled notebook parameter stops the notebook instead of being silently ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from abi.backbones.limits import backbone_names, check_window_fits, max_positions, window_parameters
from abi.notebook import check_results_dir, notebook_parameters, start_run
from abi.profiles import ParameterError, resolve_parameters

REPO = Path(__file__).resolve().parent.parent
CLAIM_NOTEBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("0[0-9]_*.ipynb"))


def test_limits_known_before_loading() -> None:
    assert max_positions("tiny-llama") == 1024
    assert max_positions("tiny-gpt2") == 1024
    assert max_positions("tiny-t5") is None  # relative positions: no hard limit
    assert max_positions("no-such-model") is None  # validate names the unknown model itself


def test_window_longer_than_the_model_is_refused() -> None:
    with pytest.raises(ParameterError, match=r"'window_len' = 4096 is longer than 'tiny-llama' can read \(1024"):
        resolve_parameters("core_nib", "smoke", window_len=4096)
    with pytest.raises(ParameterError, match="stat_window_len"):
        resolve_parameters("core_nib", "smoke", stat_window_len=2048)


def test_loaded_backbone_checks_the_window(tiny_llama) -> None:
    check_window_fits(tiny_llama, 1024)
    with pytest.raises(ParameterError, match="1025 tokens is longer than 'tiny-llama'"):
        check_window_fits(tiny_llama, 1025)


def test_parameter_discovery() -> None:
    params = {
        "backbone": "a",
        "backbones": ["b"],
        "pairs": ["c -> d"],
        "window_len": 64,
        "eval_window_len": 32,
        "n_windows": 3,
        "protocol": "faq",
    }
    assert backbone_names(params) == ["a", "b", "c", "d"]
    assert window_parameters(params) == {"window_len": 64, "eval_window_len": 32}


def test_results_dir_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "results"
    target.write_text("not a folder")
    with pytest.raises(ParameterError, match="is a file, not a folder"):
        check_results_dir(target)


def test_results_dir_is_created_with_its_figures_folder(tmp_path: Path) -> None:
    path = check_results_dir(tmp_path / "new" / "results")
    assert (path / "figures").is_dir()


def test_results_dir_unwritable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    with pytest.raises(ParameterError, match="not writable"):
        check_results_dir(tmp_path)


def test_start_run_reads_the_namespace(tmp_path: Path) -> None:
    import os

    namespace = {
        "profile": "smoke",
        "results_dir": str(tmp_path),
        "calibration_steps": 8,
        "os": os,
        "Path": Path,
        "_": "",
        "In": [""],
        "Out": {},
    }
    assert notebook_parameters(namespace) == {"profile": "smoke", "results_dir": str(tmp_path), "calibration_steps": 8}
    from abi.experiments import core_nib

    params, out_dir = start_run(core_nib.validate, namespace)
    assert params["calibration_steps"] == 8 and out_dir == tmp_path
    with pytest.raises(ParameterError, match="unknown parameter 'calibration_step'"):
        start_run(core_nib.validate, {**namespace, "calibration_step": 10})


@pytest.mark.parametrize("notebook", CLAIM_NOTEBOOKS)
def test_notebook_refuses_a_misspelled_parameter(notebook: str, tmp_path: Path) -> None:
    """Run by papermill exactly as a user would; the failure comes in the first cells, in seconds."""
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="unknown parameter 'fooo'"):
        papermill.execute_notebook(
            str(REPO / "notebooks" / f"{notebook}.ipynb"),
            str(tmp_path / "out.ipynb"),
            parameters={"profile": "smoke", "results_dir": str(tmp_path / "results"), "fooo": 1},
            progress_bar=False,
            kernel_name="python3",
            cwd=str(REPO),
        )
    assert not list((tmp_path / "results").glob("*.json"))  # nothing written
    executed = json.loads((tmp_path / "out.ipynb").read_text())
    ran = [c for c in executed["cells"] if c["cell_type"] == "code" and c.get("execution_count")]
    assert len(ran) <= 3  # parameters, injected parameters, the checking cell: no work started
