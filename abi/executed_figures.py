"""Executed notebooks point at the committed figure files instead of carrying base64 copies of them.

A claim notebook saves each figure under ``results/figures/`` and displays that file. Stored as
papermill leaves it, every re-run rewrote megabytes of base64 in ``book/executed/``, so a diff showed
blobs instead of changed numbers. After a run, each PNG output that is byte for byte a file of the
results' figures folder becomes a Markdown image of that file, linked relative to the notebook (so
JupyterLab, GitHub and the book resolve it alike); any other image stays embedded.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path

import nbformat

from abi.cache_integrity import atomic_write_text

_PNG = "image/png"
_MARKDOWN = "text/markdown"
_IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+\.png)\)")


def figure_digests(figures_dir: Path) -> dict[str, str]:
    """sha256 of each PNG in the figures folder -> its file name."""
    return {hashlib.sha256(path.read_bytes()).hexdigest(): path.name for path in sorted(figures_dir.glob("*.png"))}


def alt_text(file_name: str) -> str:
    """A readable description from the figure's file name (``core_nib_dose.png`` -> "Figure: core nib dose")."""
    return "Figure: " + Path(file_name).stem.replace("_", " ")


def figure_reference(file_name: str, link_dir: str) -> nbformat.NotebookNode:
    """The display output that shows a committed figure by reference."""
    link = f"{link_dir}/{file_name}"
    return nbformat.v4.new_output(
        "display_data", data={_MARKDOWN: f"![{alt_text(file_name)}]({link})", "text/plain": f"<figure {link}>"}
    )


def externalize(notebook: nbformat.NotebookNode, digests: dict[str, str], link_dir: str) -> int:
    """Replace, in place, every PNG output that equals a figure file by a reference to it; returns how many."""
    replaced = 0
    for cell in notebook.cells:
        for index, output in enumerate(cell.get("outputs", [])):
            png = output.get("data", {}).get(_PNG)
            if png is None:
                continue
            name = digests.get(hashlib.sha256(base64.b64decode(png)).hexdigest())
            if name is not None:
                cell.outputs[index] = figure_reference(name, link_dir)
                replaced += 1
    return replaced


def externalize_file(notebook_path: Path, figures_dir: Path, linked_dir: Path) -> int:
    """Rewrite an executed notebook so its figures reference ``linked_dir`` (where the book finds the figure
    files) instead of embedding them; the file is replaced atomically and only if something changed."""
    notebook = nbformat.read(notebook_path, as_version=4)
    link_dir = Path(os.path.relpath(linked_dir, notebook_path.parent)).as_posix()
    replaced = externalize(notebook, figure_digests(figures_dir), link_dir)
    if replaced:
        atomic_write_text(notebook_path, nbformat.writes(notebook) + "\n")
    return replaced


def referenced_figures(notebook: nbformat.NotebookNode) -> list[str]:
    """The figure files an executed notebook shows by reference, as written in its outputs."""
    return [
        link
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        for link in _IMAGE_LINK.findall(output.get("data", {}).get(_MARKDOWN, ""))
    ]
