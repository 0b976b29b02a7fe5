"""Executed notebooks show the committed figure files as numbered, captioned figures, not base64 copies.

A claim notebook saves each figure under ``results/figures/`` and displays that file. Stored as
papermill leaves it, every re-run rewrote megabytes of base64 in ``book/executed/``, so a diff showed
blobs instead of changed numbers, and the book showed an unnumbered image whose alt text was a path.
After a run, each PNG output that is byte for byte a file of the results' figures folder becomes a MyST
``figure`` of that file (linked relative to the notebook): numbered by the book, captioned and described
by what its plotting module declares it shows (``FIGURES``), and a click or tap opens it full size.
Any other image stays embedded.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import nbformat

_PNG = "image/png"
_MARKDOWN = "text/markdown"
# The book's figures live under its root at results/figures/; Sphinx copies each image to _images/ by name.
_FIGURES_UNDER_ROOT = "results/figures"
_SPHINX_IMAGES = "_images"
_FIGURE_LINK = re.compile(r"^```\{figure\} (\S+\.png)$", re.MULTILINE)


def figure_digests(figures_dir: Path) -> dict[str, str]:
    """sha256 of each PNG in the figures folder -> its file name."""
    return {hashlib.sha256(path.read_bytes()).hexdigest(): path.name for path in sorted(figures_dir.glob("*.png"))}


def figure_label(file_name: str) -> str:
    """The figure's cross-reference name in the book (``core_nib_dose.png`` -> ``fig-core-nib-dose``)."""
    return "fig-" + Path(file_name).stem.replace("_", "-")


def figure_reference(file_name: str, link_dir: str, description: str) -> nbformat.NotebookNode:
    """The display output that shows a committed figure by reference: a MyST figure whose caption and alt
    text say what it shows (the book renders text/markdown outputs as MyST and numbers the figure)."""
    link = f"{link_dir}/{file_name}"
    text = description[:1].upper() + description[1:]
    options = [f":name: {figure_label(file_name)}", f":alt: {text}"]
    if link_dir.endswith(_FIGURES_UNDER_ROOT):  # the page sits as deep as the notebook: the site's root is there
        site_root = link_dir.removesuffix(_FIGURES_UNDER_ROOT)
        options.append(f":target: {site_root}{_SPHINX_IMAGES}/{file_name}")  # a tap opens it full size
    markdown = "\n".join([f"```{{figure}} {link}", *options, "", f"{text}.", "```"])
    return nbformat.v4.new_output("display_data", data={_MARKDOWN: markdown, "text/plain": f"<figure {link}>"})


def externalize(
    notebook: nbformat.NotebookNode, digests: dict[str, str], link_dir: str, descriptions: dict[str, str]
) -> int:
    """Replace, in place, every PNG output that equals a figure file by a reference to it; returns how many.
    ``descriptions`` maps a figure's file stem to what it shows (a missing one is described by its name)."""
    replaced = 0
    for cell in notebook.cells:
        for index, output in enumerate(cell.get("outputs", [])):
            png = output.get("data", {}).get(_PNG)
            if png is None:
                continue
            name = digests.get(hashlib.sha256(base64.b64decode(png)).hexdigest())
            if name is not None:
                description = descriptions.get(Path(name).stem, Path(name).stem.replace("_", " "))
                cell.outputs[index] = figure_reference(name, link_dir, description)
                replaced += 1
    return replaced


def referenced_figures(notebook: nbformat.NotebookNode) -> list[str]:
    """The figure files an executed notebook shows by reference, as written in its outputs."""
    return [
        link
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        for link in _FIGURE_LINK.findall(output.get("data", {}).get(_MARKDOWN, ""))
    ]
