"""The whole book as one PDF, built offline: the single-page HTML build, printed by headless Chromium.

LaTeX would need a TeX installation the project's machines do not have; the single-page HTML build
holds every chapter, figure and formula on one page, and the Chromium that ``make setup`` installs
prints it after MathJax has typeset it (a virtual time budget lets the deferred scripts finish). The
PDF goes to ``_build/pdf/``, which the HTML build copies to its root (``html_extra_path``), so the
front page links it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from abi.book_assets import CHROMIUM, chromium_command, jupyter_book_build

PDF_NAME = "abi-reproduced.pdf"
PDF_DIR = Path("_build") / "pdf"
# Time Chromium's clock may run ahead for MathJax and the web fonts before it prints (virtual, not wall).
PRINT_BUDGET_MS = 30000


def pdf_path(book_root: Path) -> Path:
    """Where the book's PDF is written (and where the HTML build picks it up)."""
    return Path(book_root) / PDF_DIR / PDF_NAME


def build_single_page(book_root: Path, config: Path) -> Path:
    """jupyter-book's ``singlehtml`` build of the book (every chapter on one page); returns the page."""
    subprocess.run(jupyter_book_build(book_root, config, "singlehtml"), check=True, capture_output=True)
    site = Path(book_root) / "_build" / "singlehtml"
    page = site / _root_page(book_root)
    # The page sits in the root document's folder (book/), but links its styles, scripts and images
    # as if it sat at the site's root: give its folder the same view of them.
    for folder in ("_static", "_images"):
        view = page.parent / folder
        if page.parent != site and (site / folder).is_dir() and not view.exists():
            view.symlink_to(site / folder, target_is_directory=True)
    return page


def _root_page(book_root: Path) -> str:
    """The single page's file: the toc's root document, as HTML (``book/intro.html``)."""
    from abi.book_assets import chapter_pages

    return chapter_pages(book_root)[0]


def print_to_pdf(page: Path, pdf: Path) -> Path:
    """Print a local HTML page to ``pdf`` with headless Chromium; the file appears only when complete."""
    if not CHROMIUM.exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing; `make setup` installs it (Debian's chromium package).")
    pdf.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="abi-pdf-") as scratch:
        partial = Path(scratch) / pdf.name
        command = chromium_command(
            Path(scratch) / "profile",
            f"--print-to-pdf={partial}",
            "--no-pdf-header-footer",
            f"--virtual-time-budget={PRINT_BUDGET_MS}",
            page.resolve().as_uri(),
        )
        subprocess.run(command, check=True, capture_output=True, timeout=600)
        if not partial.is_file() or partial.stat().st_size == 0:
            raise RuntimeError(f"headless Chromium wrote no PDF; run `{' '.join(command)}` to see why.")
        shutil.move(partial, pdf)
    return pdf


def build_pdf(book_root: Path, config: Path) -> Path:
    """The book as ``_build/pdf/abi-reproduced.pdf``, from a fresh single-page build."""
    return print_to_pdf(build_single_page(book_root, config), pdf_path(book_root))
