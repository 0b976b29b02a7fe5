"""What a claim notebook does before any work: read its parameters, check them and its output folder.

papermill injects the parameters it is given as a cell of assignments after the notebook's own
``parameters`` cell; a misspelled name there would become a stray global that nothing reads. So the
notebook hands its whole namespace to :func:`start_run`, which treats every plain-valued global as
a parameter: an unknown one is refused, naming the known ones, before any model loads. The names
are declared once, in the parameters cell.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from abi.paths import results_dir as default_results_dir
from abi.profiles import ParameterError

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


def start_run(validate: Callable[..., dict[str, Any]], namespace: Mapping[str, Any]) -> tuple[dict[str, Any], Path]:
    """Validate a notebook's parameters with its claim's ``validate`` and check its output folder.

    Returns the resolved parameters and the results folder; raises before any work on a bad value.
    """
    values = notebook_parameters(namespace)
    if "profile" not in values:
        raise ParameterError("the notebook's parameters cell must define `profile`.")
    profile = values.pop("profile")
    out_dir = check_results_dir(values.pop("results_dir", None))
    return validate(profile, **values), out_dir
