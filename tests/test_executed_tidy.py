"""A stored chapter is tidied for readers: folded code, captioned figure links, no machine paths, no timestamps."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import nbformat
import pytest

from abi.executed_figures import referenced_figures
from abi.executed_tidy import tidy_file
from abi.paths import REPO_ROOT
from abi.pipeline import BuildLayout

# Two distinct tiny byte strings stand in for PNG files: only their bytes are compared.
FIGURE = b"\x89PNG\r\n\x1a\nfigure drawn by the notebook"
INLINE = b"\x89PNG\r\n\x1a\nan image that is no figure file"
BUILD_ROOT = "/home/someone/abi-checkout"


def _png_cell(image: bytes) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell("display(Image(...))")
    data = {"image/png": base64.b64encode(image).decode(), "text/plain": "<IPython.core.display.Image object>"}
    cell.outputs.append(nbformat.v4.new_output("display_data", data=data))
    return cell


def _executed_notebook(*images: bytes) -> nbformat.NotebookNode:
    """What papermill leaves: parameters, injected parameters, the set-up cell, figure cells, timings, paths."""
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell('profile = "cpu"\nresults_dir = None', metadata={"tags": ["parameters"]})
    injected = nbformat.v4.new_code_cell(
        f'profile = "cpu"\nresults_dir = "{BUILD_ROOT}/results"', metadata={"tags": ["injected-parameters"]}
    )
    setup = nbformat.v4.new_code_cell("params, out_dir = start_run(core_nib.validate, globals())")
    wrote = nbformat.v4.new_code_cell("print(...)")
    wrote.outputs.append(nbformat.v4.new_output("stream", name="stdout", text=f"wrote {BUILD_ROOT}/results/a.json\n"))
    notebook.cells = [nbformat.v4.new_markdown_cell("# A chapter"), parameters, injected, setup, wrote]
    notebook.cells += [_png_cell(image) for image in images]
    for cell in notebook.cells:
        cell.metadata["execution"] = {"iopub.status.busy": "2026-12-02T10:00:00Z"}
        cell.metadata["papermill"] = {"duration": 1.5, "start_time": "2026", "end_time": "2026", "status": "completed"}
    notebook.metadata["papermill"] = {"input_path": f"{BUILD_ROOT}/notebooks/01.ipynb", "duration": 80.0}
    return notebook


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A book tree: an executed notebook in book/executed/, the figure files in results/figures/."""
    figures = tmp_path / "results" / "figures"
    figures.mkdir(parents=True)
    (figures / "core_nib_arms.png").write_bytes(FIGURE)
    executed = tmp_path / "book" / "executed" / "01_claim.ipynb"
    executed.parent.mkdir(parents=True)
    nbformat.write(_executed_notebook(FIGURE, INLINE), executed)
    return executed, figures


def _tidied(tree: tuple[Path, Path], linked: Path | None = None) -> nbformat.NotebookNode:
    executed, figures = tree
    assert tidy_file(executed, figures, linked or figures, [Path(BUILD_ROOT)])
    return nbformat.read(executed, as_version=4)


def test_a_figure_file_output_becomes_a_captioned_figure_link_and_other_images_stay(tree) -> None:
    notebook = _tidied(tree)
    executed, figures = tree
    assert referenced_figures(notebook) == ["../../results/figures/core_nib_arms.png"]
    markdown = notebook.cells[-2].outputs[0]["data"]["text/markdown"]
    assert ":name: fig-core-nib-arms" in markdown
    assert ":alt: Held-out NIB metrics of each arm" in markdown, "alt text and caption say what the figure shows"
    assert ":target: ../../_images/core_nib_arms.png" in markdown, "a tap opens the figure full size"
    kept = notebook.cells[-1].outputs[0]["data"]
    assert base64.b64decode(kept["image/png"]) == INLINE, "an image that is no figure file must stay embedded"
    for link in referenced_figures(notebook):
        assert (executed.parent / link).resolve() == (figures / "core_nib_arms.png").resolve()


def test_the_link_points_where_the_book_finds_the_figures(tree, tmp_path: Path) -> None:
    """A scratch build links to the copy of its figures under the book's root, not to the results folder."""
    linked = tmp_path / "book_root" / "results" / "figures"
    (link,) = referenced_figures(_tidied(tree, linked))
    assert (tree[0].parent / link).resolve() == (linked / "core_nib_arms.png").resolve()


def test_parameters_are_removed_setup_folded_and_code_input_hidden(tree) -> None:
    cells = _tidied(tree).cells
    tags = [cell.metadata.get("tags", []) for cell in cells]
    assert "remove-cell" in tags[1] and "remove-cell" in tags[2], "both parameter cells leave the page"
    assert "hide-cell" in tags[3], "the set-up cell and its parameter table are folded whole"
    assert all("hide-input" in t for t in tags[4:]), "every other code cell shows its output, its code folded"
    assert tags[0] == [], "markdown is untouched"


def test_no_machine_path_and_no_timestamp_is_left(tree) -> None:
    notebook = _tidied(tree)
    text = nbformat.writes(notebook)
    assert BUILD_ROOT not in text
    assert notebook.cells[4].outputs[0]["text"] == "wrote results/a.json\n"
    assert 'results_dir = "results"' in notebook.cells[2].source
    assert all("execution" not in cell.metadata for cell in notebook.cells)
    assert all(set(cell.metadata["papermill"]) == {"status"} for cell in notebook.cells)
    assert "duration" not in notebook.metadata["papermill"]


def test_tidying_twice_changes_nothing(tree) -> None:
    executed, figures = tree
    _tidied(tree)
    before = executed.read_bytes()
    assert not tidy_file(executed, figures, figures, [Path(BUILD_ROOT)])
    assert executed.read_bytes() == before


def test_committed_chapters_are_tidy_and_link_only_to_committed_figures() -> None:
    layout = BuildLayout.for_profile("cpu")
    linked = 0
    for executed in sorted(layout.executed_dir.glob("[0-9]*.ipynb")):
        text = executed.read_text()
        assert str(REPO_ROOT) not in text, f"{executed.name} shows this machine's folder"
        notebook = nbformat.reads(text, as_version=4)
        for link in referenced_figures(notebook):
            target = (executed.parent / link).resolve()
            assert target.is_file(), f"{executed.name} links to {link}, which does not exist"
            assert target.parent == (REPO_ROOT / "results" / "figures").resolve(), f"{executed.name}: {link}"
            linked += 1
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        unfolded = [i for i, cell in enumerate(code) if not cell.metadata.get("tags")]
        assert not unfolded, f"{executed.name}: code cells {unfolded} are shown unfolded"
        assert "execution" not in json.dumps([cell.metadata for cell in notebook.cells])
    assert linked > 0, "no committed chapter links to its figures: were the executed notebooks re-embedded?"
