"""Executed notebooks link to the committed figure files instead of embedding base64 copies of them."""

from __future__ import annotations

import base64
from pathlib import Path

import nbformat
import pytest

from abi.executed_figures import externalize_file, referenced_figures
from abi.paths import REPO_ROOT
from abi.pipeline import BuildLayout

# Two distinct tiny byte strings stand in for PNG files: only their bytes are compared.
FIGURE = b"\x89PNG\r\n\x1a\nfigure drawn by the notebook"
INLINE = b"\x89PNG\r\n\x1a\nan image that is no figure file"


def _notebook_with(*images: bytes) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.cells.append(nbformat.v4.new_markdown_cell("# A chapter"))
    for image in images:
        cell = nbformat.v4.new_code_cell("display(Image(...))")
        data = {"image/png": base64.b64encode(image).decode(), "text/plain": "<IPython.core.display.Image object>"}
        cell.outputs.append(nbformat.v4.new_output("display_data", data=data))
        notebook.cells.append(cell)
    return notebook


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A book tree: an executed notebook in book/executed/, the figure files in results/figures/."""
    figures = tmp_path / "results" / "figures"
    figures.mkdir(parents=True)
    (figures / "claim_arms.png").write_bytes(FIGURE)
    executed = tmp_path / "book" / "executed" / "01_claim.ipynb"
    executed.parent.mkdir(parents=True)
    nbformat.write(_notebook_with(FIGURE, INLINE), executed)
    return executed, figures


def test_a_figure_file_output_becomes_a_link_and_other_images_stay(tree: tuple[Path, Path]) -> None:
    executed, figures = tree
    assert externalize_file(executed, figures, figures) == 1
    notebook = nbformat.read(executed, as_version=4)
    assert referenced_figures(notebook) == ["../../results/figures/claim_arms.png"]
    markdown = notebook.cells[1].outputs[0]["data"]["text/markdown"]
    assert markdown.startswith("![Figure: claim arms]("), "the link carries a description, not a path, as alt text"
    kept = notebook.cells[2].outputs[0]["data"]
    assert base64.b64decode(kept["image/png"]) == INLINE, "an image that is no figure file must stay embedded"
    for link in referenced_figures(notebook):
        assert (executed.parent / link).resolve() == (figures / "claim_arms.png").resolve()


def test_a_notebook_without_figure_outputs_is_left_byte_for_byte(tree: tuple[Path, Path]) -> None:
    executed, figures = tree
    nbformat.write(_notebook_with(INLINE), executed)
    before = executed.read_bytes()
    assert externalize_file(executed, figures, figures) == 0
    assert executed.read_bytes() == before


def test_the_link_points_where_the_book_finds_the_figures(tree: tuple[Path, Path], tmp_path: Path) -> None:
    """A scratch build links to the copy of its figures under the book's root, not to the results folder."""
    executed, figures = tree
    linked = tmp_path / "book_root" / "results" / "figures"
    externalize_file(executed, figures, linked)
    (link,) = referenced_figures(nbformat.read(executed, as_version=4))
    assert (executed.parent / link).resolve() == (linked / "claim_arms.png").resolve()


def test_committed_chapters_link_only_to_committed_figures() -> None:
    layout = BuildLayout.for_profile("cpu")
    linked = 0
    for executed in sorted(layout.executed_dir.glob("[0-9]*.ipynb")):
        for link in referenced_figures(nbformat.read(executed, as_version=4)):
            target = (executed.parent / link).resolve()
            assert target.is_file(), f"{executed.name} links to {link}, which does not exist"
            assert target.parent == (REPO_ROOT / "results" / "figures").resolve(), f"{executed.name}: {link}"
            linked += 1
    assert linked > 0, "no committed chapter links to its figures: were the executed notebooks re-embedded?"
