"""What a claim notebook does before any work: read its parameters, check them and its output folder.

papermill injects the parameters it is given as a cell of assignments after the notebook's own
``parameters`` cell; a misspelled name there would become a stray global that nothing reads. So the
notebook hands its whole namespace to :func:`start_run`, which treats every plain-valued global as
a parameter: an unknown one is refused, naming the known ones, before any model loads. The names
are declared once, in the parameters cell.

It also fixes the number of torch threads (:func:`pin_torch_threads`): a CPU sum split over two threads
adds its floats in another order than one thread does, so a module trained with two differs from one
trained with one by about 1e-6 after a few steps, and a contrast near zero can change its sign. The
committed results were made with one thread, so a notebook opened in JupyterLab gets one too.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from abi.paths import results_dir as default_results_dir
from abi.profiles import ParameterError

# Torch threads of a claim run unless ``ABI_TORCH_THREADS`` says otherwise (0: torch's own default, one
# per core): the committed cpu results were made with one.
COMMITTED_TORCH_THREADS = 1
THREADS_ENV = "ABI_TORCH_THREADS"

# Globals IPython defines itself with plain values; every other plain-valued global is a parameter.
_IPYTHON_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython", "open"})
_PLAIN = (type(None), bool, int, float, str, list, tuple, dict)


def notebook_parameters(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters a notebook holds: its plain-valued, public globals (modules, functions and
    classes are imports, ``_``-names are IPython's history)."""
    return {
        name: value
        for name, value in namespace.items()
        if not name.startswith("_") and name not in _IPYTHON_NAMES and isinstance(value, _PLAIN)
    }


def check_results_dir(results_dir: str | os.PathLike | None) -> Path:
    """The folder results go to, created if needed and proven writable now, not after hours of training."""
    path = Path(results_dir) if results_dir else default_results_dir()
    if path.exists() and not path.is_dir():
        raise ParameterError(f"results_dir {str(path)!r} is a file, not a folder; pass a folder (-p results_dir DIR).")
    try:
        (path / "figures").mkdir(parents=True, exist_ok=True)
        for folder in (path, path / "figures"):
            with tempfile.TemporaryFile(dir=folder):
                pass
    except OSError as error:
        raise ParameterError(
            f"results_dir {str(path)!r} is not writable ({error.strerror}); pass a folder you can write to "
            "(-p results_dir DIR)."
        ) from error
    return path


def pin_torch_threads() -> int:
    """Set torch's intra-op threads to ``ABI_TORCH_THREADS`` (default :data:`COMMITTED_TORCH_THREADS`) and
    return the count now in use; results match the committed ones only at the count they were made with."""
    import torch

    text = os.environ.get(THREADS_ENV, str(COMMITTED_TORCH_THREADS))
    try:
        threads = int(text)
    except ValueError:
        threads = -1
    if threads < 0:
        raise ParameterError(
            f"{THREADS_ENV}={text!r} is not a thread count; set it to 1 or more, or 0 for torch's default."
        )
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def start_run(validate: Callable[..., dict[str, Any]], namespace: Mapping[str, Any]) -> tuple[dict[str, Any], Path]:
    """Validate a notebook's parameters with its claim's ``validate`` and check its output folder.

    Returns the resolved parameters and the results folder; raises before any work on a bad value.
    Pins the torch threads (:func:`pin_torch_threads`) and says how many it uses.
    """
    values = notebook_parameters(namespace)
    if "profile" not in values:
        raise ParameterError("the notebook's parameters cell must define `profile`.")
    profile = values.pop("profile")
    out_dir = check_results_dir(values.pop("results_dir", None))
    params = validate(profile, **values)
    threads = pin_torch_threads()
    note = "as the committed results" if threads == COMMITTED_TORCH_THREADS else "the committed results used 1"
    print(f"torch threads: {threads} ({note}; set {THREADS_ENV} to change)")
    return params, out_dir
