"""Which edition of the paper a build shows: the project's version, the commit and date of its results.

The front page prints them (MyST substitutions ``{{ version }}``, ``{{ results_source }}``,
``{{ results_date }}``, ``{{ profile }}``), so a reader of any copy, HTML or PDF, knows what they are
reading. They are computed at build time, never typed: the committed results' last commit from git; a
scratch build (``PROFILE=smoke make book``, CI) names its own run instead. The build reads a copy of
``_config.yml`` with the substitutions added, under ``_build/``, so the committed config never changes.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from importlib import metadata
from pathlib import Path

import yaml

from abi.paths import REPO_ROOT

EDITION_CONFIG = Path("_build") / "_config.edition.yml"
_UNKNOWN = "unknown (not a git checkout)"


def _results_commit(root: Path) -> tuple[str, str]:
    """Short hash and date (YYYY-MM-DD) of the last commit that changed ``results/``."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "log", "-1", "--format=%h %cs", "--", "results"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        out = []
    return (out[0], out[1]) if len(out) == 2 else (_UNKNOWN, _UNKNOWN)


def edition(profile: str, committed_results: bool, root: Path = REPO_ROOT) -> dict[str, str]:
    """The substitutions the front page shows."""
    try:
        version = metadata.version("abi")
    except metadata.PackageNotFoundError:
        version = "unknown (the package is not installed)"
    if committed_results:
        commit, date = _results_commit(root)
        source = f"the committed results of commit {commit}"
    else:
        source, date = f"this build's own {profile} run", dt.date.today().isoformat()
    return {"version": version, "results_source": source, "results_date": date, "profile": profile}


def edition_config(book_root: Path, values: dict[str, str]) -> Path:
    """``_config.yml`` plus the edition's substitutions, written under ``_build/``; returns its path."""
    config = yaml.safe_load((book_root / "_config.yml").read_text())
    parse = config.setdefault("parse", {})
    extensions = parse.setdefault("myst_enable_extensions", [])
    if "substitution" not in extensions:
        extensions.append("substitution")
    parse["myst_substitutions"] = {**parse.get("myst_substitutions", {}), **values}
    target = book_root / EDITION_CONFIG
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target
