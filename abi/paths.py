"""Where the library keeps caches and results, overridable by environment variables."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Root of every on-disk cache (model copies, corpora, tap features); never committed."""
    path = Path(os.environ.get("ABI_CACHE_DIR", REPO_ROOT / ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir() -> Path:
    """Where notebooks write result JSON and figures (``results/`` unless overridden)."""
    path = Path(os.environ.get("ABI_RESULTS_DIR", REPO_ROOT / "results"))
    path.mkdir(parents=True, exist_ok=True)
    return path
