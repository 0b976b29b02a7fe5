"""Every claim by name, loaded on demand: what the verifier, the summary and the build need.

A claim ``X`` is ``abi.experiments.X`` (the experiment; importing it registers its profiles) and
``abi.experiments.X_stats`` (what is derived from its result file); its figures are ``abi.plotting.X``.
This module is the one place that imports them by name. A notebook's stored run is current while the
code it imports is unchanged (:mod:`abi.import_graph`), so a claim's own notebook never imports this
module: its run then depends on its own claim's code, not on every claim's. The summary and the
verifier, which read every claim, do import it.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import abi.plotting
from abi.experiments import STATS_SUFFIX, claim_names

_experiments: dict[str, ModuleType] = {}


def stats_module(claim: str) -> ModuleType:
    """``abi.experiments.<claim>_stats``: the claim's ``derive``, ``claim_verdict``, ``PUBLISHED``."""
    if claim not in claim_names():
        raise KeyError(f"unknown claim {claim!r}; known: {', '.join(claim_names())}.")
    return importlib.import_module(f"abi.experiments.{claim}{STATS_SUFFIX}")


def claim_modules() -> dict[str, ModuleType]:
    """Every claim's experiment module by claim name, imported on first use (each registers its profiles)."""
    if not _experiments:
        modules = [importlib.import_module(f"abi.experiments.{name}") for name in claim_names()]
        _experiments.update({module.CLAIM: module for module in modules})
    return _experiments


def declared_figures() -> dict[str, str]:
    """Every figure the book uses, file stem -> what it shows: every plotting module imported, then the union
    of their ``FIGURES``."""
    for info in pkgutil.iter_modules(abi.plotting.__path__):
        importlib.import_module(f"abi.plotting.{info.name}")
    return abi.plotting.loaded_figures()
