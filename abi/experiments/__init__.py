"""One module per claim: the algorithm of each notebook, importable and testable.

A claim ``X`` is the pair ``X.py`` (runs the experiment, registers its profiles) and ``X_stats.py``
(derives and decides from a result file, with no model code). Importing this package imports
neither: :func:`claim_names` reads the folder; :mod:`abi.claims` imports claims by name (what the
summary and the verifier need). Shared helpers (``common``) are not claims.
"""

from __future__ import annotations

import pkgutil
import sys
from types import ModuleType

STATS_SUFFIX = "_stats"


def claim_names() -> tuple[str, ...]:
    """Every claim, read from the file names: a module with a ``_stats`` sibling."""
    names = {info.name for info in pkgutil.iter_modules(__path__)}
    return tuple(sorted(n for n in names if f"{n}{STATS_SUFFIX}" in names))


def loaded_stats_module(claim: str) -> ModuleType | None:
    """The claim's statistics module if it is already imported (its experiment module imports it), else
    ``None``: a lookup, never an import, so code that calls it depends on no claim (see :mod:`abi.claims`)."""
    return sys.modules.get(f"{__name__}.{claim}{STATS_SUFFIX}")
