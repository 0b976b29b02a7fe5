"""Progress bars are text in the notebooks papermill stores and tqdm.auto's choice elsewhere (widgets in JupyterLab)."""

from __future__ import annotations

import os
import subprocess
import sys

from abi import pipeline
from abi.progress import PROGRESS_ENV

_WHICH = (
    "import abi.progress, tqdm.auto, tqdm.std; "
    "print(abi.progress.tqdm is tqdm.std.tqdm, abi.progress.tqdm is tqdm.auto.tqdm)"
)


def _progress_class(env_value: str | None) -> str:
    environ = {k: v for k, v in os.environ.items() if k != PROGRESS_ENV}
    if env_value is not None:
        environ[PROGRESS_ENV] = env_value
    return subprocess.run(
        [sys.executable, "-c", _WHICH], env=environ, capture_output=True, text=True, check=True
    ).stdout


def test_the_pipeline_starts_its_kernels_with_text_progress() -> None:
    assert pipeline._kernel_env()[PROGRESS_ENV] == "text"
    assert _progress_class("text").split() == ["True", "False"]


def test_elsewhere_tqdm_auto_chooses() -> None:
    assert _progress_class(None).split() == ["False", "True"]
