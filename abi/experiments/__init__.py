"""One module per claim: the algorithm of each notebook, importable and testable.

A claim ``X`` is the pair ``X.py`` (runs the experiment, registers its profiles) and ``X_stats.py``
(derives and decides from a result file, with no model code). Importing this package imports
neither: :func:`claim_names` reads the folder, :func:`stats_module` imports one claim's statistics
(what reports, the summary and the verifier need), and :func:`claim_modules` imports every
experiment (what profiles and the pipeline need). Shared helpers (``common``) are not claims.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

_STATS_SUFFIX = "_stats"
_loaded: dict[str, ModuleType] = {}


def claim_names() -> tuple[str, ...]:
    """Every claim, read from the file names: a module with a ``_stats`` sibling."""
    names = {info.name for info in pkgutil.iter_modules(__path__)}
    return tuple(sorted(n for n in names if f"{n}{_STATS_SUFFIX}" in names))


def stats_module(claim: str) -> ModuleType:
    """``abi.experiments.<claim>_stats``: the claim's ``derive``, ``claim_verdict``, ``PUBLISHED``."""
    if claim not in claim_names():
        raise KeyError(f"unknown claim {claim!r}; known: {', '.join(claim_names())}.")
    return importlib.import_module(f"{__name__}.{claim}{_STATS_SUFFIX}")


def claim_modules() -> dict[str, ModuleType]:
    """Every claim's experiment module by claim name, imported on first use (each registers its profiles)."""
    if not _loaded:
        modules = {name: importlib.import_module(f"{__name__}.{name}") for name in claim_names()}
        _loaded.update({module.CLAIM: module for module in modules.values()})
    return _loaded


def __getattr__(name: str) -> object:
    """``from abi.experiments import CLAIM_MODULES`` imports the experiments then (PEP 562)."""
    if name == "CLAIM_MODULES":
        return claim_modules()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
