"""A stored chapter as a reader sees it: the executed notebook tidied after its run, never re-run for it.

After papermill has run a notebook, and before it is stored in ``book/executed/``:

* code input is folded (``hide-input``): the page reads as text, tables and figures, and a reader can
  unfold any cell's code;
* the ``parameters`` cell and papermill's injected one are removed from the page (``remove-cell``); the
  cell that checks them and shows the resolved parameters is folded whole (``hide-cell``);
* each figure output that is a committed figure file becomes a numbered, captioned figure linking the
  file (:mod:`abi.executed_figures`);
* the build machine's folders are cut from every output and from papermill's metadata, so no page shows
  where it was built (``/home/me/abi/results/x.json`` reads ``results/x.json``);
* Jupyter's and papermill's per-cell timestamps are dropped, so a re-run's diff shows changed outputs.

Every step is idempotent, so the committed chapters can be tidied again after a change here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import nbformat

from abi.cache_integrity import atomic_write_text
from abi.claims import declared_figures
from abi.executed_figures import externalize, figure_digests

PARAMETER_TAGS = ("parameters", "injected-parameters")
# The claim notebooks' first code cell after the parameters: it checks them and shows the resolved table.
_SETUP_CALL = "start_run("
_FOLD_TAGS = ("hide-input", "hide-output", "hide-cell", "remove-input", "remove-output", "remove-cell")
_TIMING_KEYS = ("start_time", "end_time", "duration")
_BINARY_PREFIX = "image/"


def _tags(cell: nbformat.NotebookNode) -> list[str]:
    return cell.setdefault("metadata", {}).setdefault("tags", [])


def fold_page(notebook: nbformat.NotebookNode) -> None:
    """Remove the parameter cells, fold the set-up cell whole and every other code cell's input."""
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        tags = _tags(cell)
        if any(tag in tags for tag in PARAMETER_TAGS):
            wanted = "remove-cell"
        elif _SETUP_CALL in "".join(cell.source):
            wanted = "hide-cell"
        else:
            wanted = "hide-input"
        if not any(tag in tags for tag in _FOLD_TAGS):
            tags.append(wanted)


def drop_timings(notebook: nbformat.NotebookNode) -> None:
    """Forget when each cell ran (Jupyter's ``execution`` and papermill's times); keep papermill's status."""
    for metadata in [notebook.metadata, *(cell.get("metadata", {}) for cell in notebook.cells)]:
        metadata.pop("execution", None)
        papermill = metadata.get("papermill", {})
        for key in _TIMING_KEYS:
            papermill.pop(key, None)


def _without_roots(text: str, roots: tuple[str, ...]) -> str:
    for root in roots:
        text = text.replace(root + "/", "").replace(root, ".")
    return text


def _scrub(value: Any, roots: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return _without_roots(value, roots)
    if isinstance(value, list):
        return [_scrub(item, roots) for item in value]
    if isinstance(value, dict):
        return {k: v if k.startswith(_BINARY_PREFIX) else _scrub(v, roots) for k, v in value.items()}
    return value


def cut_machine_paths(notebook: nbformat.NotebookNode, roots: Iterable[Path]) -> None:
    """Make every path under ``roots`` (the repository, the build's folders) relative, in outputs and metadata.

    The notebooks' own code never names a machine folder; only papermill's injected cell does, so cell
    sources are scrubbed there alone."""
    ordered = tuple(sorted({os.fspath(Path(root).resolve()) for root in roots}, key=len, reverse=True))
    notebook.metadata = nbformat.from_dict(_scrub(notebook.metadata, ordered))
    for cell in notebook.cells:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            cell.source = _without_roots("".join(cell.source), ordered)
        if cell.cell_type == "code":
            cell.outputs = [nbformat.from_dict(_scrub(output, ordered)) for output in cell.outputs]


def tidy(notebook: nbformat.NotebookNode, figures_dir: Path, link_dir: str, roots: Iterable[Path]) -> None:
    """Every step above, in place."""
    externalize(notebook, figure_digests(figures_dir), link_dir, declared_figures())
    fold_page(notebook)
    drop_timings(notebook)
    cut_machine_paths(notebook, roots)


def tidy_file(notebook_path: Path, figures_dir: Path, linked_dir: Path, roots: Iterable[Path]) -> bool:
    """Tidy an executed notebook file in place (atomically); True when it changed. ``linked_dir`` is where the
    book finds the figure files, ``roots`` the folders whose absolute paths must not show."""
    original = notebook_path.read_text(encoding="utf-8")
    notebook = nbformat.reads(original, as_version=4)
    link_dir = Path(os.path.relpath(linked_dir, notebook_path.parent)).as_posix()
    tidy(notebook, figures_dir, link_dir, roots)
    text = nbformat.writes(notebook) + "\n"
    if text != original:
        atomic_write_text(notebook_path, text)
    return text != original
