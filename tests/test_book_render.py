"""The built book renders completely offline, as a reader's browser draws it.

Every page of the toc is loaded in headless Chromium from a server on 127.0.0.1, with every other
host blocked and recorded: the page loads, MathJax typesets every formula, every image loads,
internal links point to files that exist, the sidebar reaches every chapter, and no request goes
to another host. The book is built once per session into a temporary folder (seconds) from the
committed executed notebooks, else from those of an up-to-date ``PROFILE=smoke make book``, else
from a fresh smoke-profile run of the toc's notebooks (about a minute more on an idle machine).
"""

from __future__ import annotations

import re
import shutil
import struct
import threading
from collections.abc import Iterator
from functools import partial
from html import unescape
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

from abi import book_assets
from abi.book_assets import CHROMIUM, CHROMIUM_FLAGS, OFFLINE_RESOLVER, chapter_pages
from abi.executed_figures import referenced_figures
from abi.paths import REPO_ROOT
from abi.pipeline import BuildLayout, build_book, is_current, is_report, run_notebooks

LOCAL_HOSTS = {"127.0.0.1", "localhost"}
PAGES = chapter_pages(REPO_ROOT)
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing; `make setup` installs it (Debian's chromium package)"
)

# Facts about a loaded page, gathered in the browser after MathJax has finished.
_PAGE_FACTS = """() => ({
  title: document.title,
  math: document.querySelectorAll('.math').length,
  untypeset: [...document.querySelectorAll('.math')].filter(e => !e.querySelector('mjx-container'))
               .map(e => e.textContent.slice(0, 80)),
  containers: document.querySelectorAll('mjx-container').length,
  mathErrors: [...document.querySelectorAll('mjx-merror')].map(e => e.textContent.slice(0, 80)),
  imageCount: document.images.length,
  brokenImages: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  missingAnchors: [...document.querySelectorAll('a[href^="#"]')].map(a => decodeURIComponent(a.hash.slice(1)))
                    .filter(id => id && !document.getElementById(id)),
  nav: [...document.querySelectorAll('nav.bd-docs-nav a[href]')].map(a => a.href),
  // Wider than the viewport and not inside a box that scrolls it (a table may scroll in its own box).
  overflowing: [...document.querySelectorAll('article *')].filter(e => {
    const box = e.getBoundingClientRect();
    if (box.width === 0 || (box.right <= innerWidth + 1 && box.left >= -1)) return false;
    for (let p = e.parentElement; p && p !== document.body; p = p.parentElement) {
      if (['auto', 'scroll', 'hidden'].includes(getComputedStyle(p).overflowX)) return false;
    }
    return true;
  }).map(e => `${e.tagName}.${e.className} (${Math.round(e.getBoundingClientRect().width)} px)`),
  images: [...document.querySelectorAll('article img')].map(i => ({
    src: i.src, alt: i.alt, caption: i.closest('figure')?.querySelector('figcaption')?.textContent.trim() || '',
  })),
  text: document.body.innerText,
})"""
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}


def _ready_notebooks(names: list[str]) -> list[Path] | None:
    """Executed notebooks that can be rendered as they are: the committed ones, else those of an
    up-to-date ``PROFILE=smoke make book``; None when neither set is complete."""
    committed = [BuildLayout.for_profile("cpu").executed_dir / f"{name}.ipynb" for name in names]
    if all(path.is_file() for path in committed):
        return committed
    smoke = BuildLayout.for_profile("smoke")
    if all(is_current(smoke, name) for name in names):
        return [smoke.executed_dir / f"{name}.ipynb" for name in names]
    return None


@pytest.fixture(scope="session")
def built_book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Book root of a fresh build in a temporary folder (the committed tree is never written)."""
    layout = BuildLayout.for_profile("smoke", scratch=tmp_path_factory.mktemp("book"))
    names = [Path(page).stem for page in PAGES if page.startswith("book/executed/")]
    notebooks = _ready_notebooks(names)
    if notebooks is None:
        run_notebooks(layout, names=tuple(names))
    else:  # the executed notebooks with the results they were made from (the build verifies them)
        layout.executed_dir.mkdir(parents=True)
        for path in notebooks:
            shutil.copy(path, layout.executed_dir / path.name)
        source = BuildLayout.for_profile("cpu" if notebooks[0].is_relative_to(REPO_ROOT / "book") else "smoke")
        shutil.copytree(source.results_dir, layout.results_dir, dirs_exist_ok=True)
    build_book(layout)
    return layout.book_root


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output to failures."""


@pytest.fixture(scope="session")
def site(built_book: Path) -> Iterator[str]:
    """Base URL of the built HTML, served on 127.0.0.1 (a real origin, as on a web host)."""
    handler = partial(_QuietHandler, directory=str(built_book / "_build" / "html"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def browser(playwright, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, dict]]:
    """Debian's Chromium driven by playwright, with a fresh profile; requests to other hosts are
    blocked and recorded (``log["external"]``), failed local ones too (``log["failed"]``)."""
    log: dict[str, list[str]] = {"external": [], "failed": []}

    def gate(route) -> None:
        url = route.request.url
        if urlsplit(url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            log["external"].append(url)
            route.abort()

    def check_response(response) -> None:
        if response.status >= 400:
            log["failed"].append(f"{response.status} {response.url}")

    context = playwright.chromium.launch_persistent_context(
        str(tmp_path_factory.mktemp("chromium-profile")),
        executable_path=str(CHROMIUM),
        headless=True,
        args=[*CHROMIUM_FLAGS, OFFLINE_RESOLVER],
    )
    context.route("**/*", gate)
    context.on("response", check_response)
    context.on("requestfailed", lambda request: log["failed"].append(f"{request.failure} {request.url}"))
    try:
        yield context, log
    finally:
        context.close()


def _figure_outputs(notebook: Path) -> tuple[int, int]:
    """Images among an executed notebook's cell outputs (each must appear on its page): embedded ones,
    and linked figure files (each must appear with its caption)."""
    executed = nbformat.read(notebook, as_version=4)
    embedded = sum(
        "image/png" in output.get("data", {}) for cell in executed.cells for output in cell.get("outputs", [])
    )
    return embedded, len(referenced_figures(executed))


def _local_file(url: str, site: str, html: Path) -> Path | None:
    """The file a same-site URL serves (``dir/`` serves ``dir/index.html``); None for other sites."""
    if not url.startswith(site):
        return None
    path = unquote(urlsplit(url).path).lstrip("/")
    return html / path / "index.html" if path.endswith("/") or not path else html / path


@needs_chromium
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("page_path", PAGES)
def test_page_renders_offline(page_path: str, width: str, built_book: Path, site: str, browser: tuple) -> None:
    context, log = browser
    log["external"].clear()
    log["failed"].clear()
    errors: list[str] = []
    page = context.new_page()
    page.set_viewport_size(dict(zip(("width", "height"), WIDTHS[width])))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    try:
        response = page.goto(site + page_path, wait_until="load")
        assert response is not None and response.ok, f"{page_path}: {response and response.status}"
        # MathJax is deferred and typesets asynchronously; wait for it where the page loads it.
        page.evaluate("() => window.MathJax?.startup?.promise")
        facts = page.evaluate(_PAGE_FACTS)
    finally:
        page.close()

    html = built_book / "_build" / "html"
    assert facts["title"], f"{page_path}: the page has no title"
    assert not log["external"], f"{page_path}: requests left the machine: {log['external']}"
    assert not log["failed"], f"{page_path}: local requests failed: {log['failed']}"
    assert not errors, f"{page_path}: JavaScript or console errors: {errors}"
    assert not facts["overflowing"], f"{page_path} ({width}): wider than the page: {facts['overflowing'][:5]}"
    for root in {str(REPO_ROOT), str(built_book)}:
        assert root not in facts["text"], f"{page_path}: shows the build machine's folder {root}"
    assert "site-packages" not in facts["text"], f"{page_path}: shows an installation path"
    assert not facts["untypeset"], f"{page_path}: MathJax left these formulas as TeX: {facts['untypeset']}"
    assert not facts["mathErrors"], f"{page_path}: MathJax could not typeset: {facts['mathErrors']}"
    assert not facts["brokenImages"], f"{page_path}: images did not load: {facts['brokenImages']}"
    missing = sorted({url for url in facts["links"] if (f := _local_file(url, site, html)) and not f.is_file()})
    assert not missing, f"{page_path}: internal links to missing files: {missing}"
    assert not facts["missingAnchors"], f"{page_path}: links to missing anchors: {facts['missingAnchors']}"
    reachable = {page_path} | {urlsplit(url).path.lstrip("/") for url in facts["nav"]}
    assert set(PAGES) <= reachable, f"{page_path}: the sidebar misses {sorted(set(PAGES) - reachable)}"
    if page_path == PAGES[0]:
        # The front page has display and inline math: MathJax must have drawn it, not left it raw.
        assert facts["math"] > 0 and facts["containers"] >= facts["math"], facts
    for image in facts["images"]:
        name = Path(urlsplit(image["src"]).path).name
        assert image["alt"] and "/" not in image["alt"] and name not in image["alt"], (
            f"{page_path}: image {name} has no description as alt text ({image['alt']!r})"
        )
    if "executed/" in page_path:
        embedded, linked = _figure_outputs(built_book / page_path.replace(".html", ".ipynb"))
        figures = embedded + linked
        shown = len(facts["images"])
        assert shown >= figures, f"{page_path}: {figures} figure outputs, {shown} images shown"
        if not is_report(Path(page_path).stem):
            assert figures > 0, f"{page_path}: a claim chapter without its figures"
        uncaptioned = [image["src"] for image in facts["images"] if not image["caption"]]
        assert len(facts["images"]) - len(uncaptioned) >= linked, f"{page_path}: figures without caption"


@needs_chromium
def test_front_page_screenshot(built_book: Path) -> None:
    """build_book() leaves a PNG of the front page beside the HTML, at the width it was taken."""
    png = built_book / "_build" / "front_page.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, book_assets.SCREENSHOT_SIZE[1]), (width, height)
    assert len(data) > 50_000, f"{png} is {len(data)} bytes: a blank page?"


def test_build_without_local_mathjax_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A missing MathJax fails the build before jupyter-book runs, and says how to install it."""
    monkeypatch.setattr(book_assets, "MATHJAX_PACKAGE", tmp_path / "no-mathjax")
    layout = BuildLayout.for_profile("smoke", scratch=tmp_path)
    shutil.copytree(REPO_ROOT / "results", layout.results_dir)  # verified results: the build gets to MathJax
    with pytest.raises(SystemExit, match="make setup"):
        build_book(layout)


def _normalised(text: str) -> str:
    """Text as compared: ligatures unfolded, whitespace and hyphenation at line ends collapsed."""
    text = text.replace("\ufb01", "fi").replace("\ufb02", "fl").replace("-\n", "-")
    return re.sub(r"\s+", " ", text).strip()


@needs_chromium
def test_the_pdf_holds_every_chapter_and_figure(built_book: Path) -> None:
    """build_book() prints the single-page build to a PDF that the front page links, with every chapter."""
    pypdf = pytest.importorskip("pypdf", reason="pypdf is missing; run `make setup`")
    html = built_book / "_build" / "html"
    pdf = html / "abi-reproduced.pdf"
    assert pdf.is_file(), "the book's PDF is missing from the built site"
    reader = pypdf.PdfReader(pdf)
    text = _normalised(" ".join(page.extract_text() for page in reader.pages))
    for page_path in PAGES:
        heading = re.search(r"<title>(.*?)</title>", (html / page_path).read_text(), re.S)
        assert heading, f"{page_path} has no title"
        title = _normalised(unescape(heading.group(1)).rsplit(" \u2014 ", 1)[0])
        assert title in text, f"the PDF misses the chapter {title!r}"
    figures = sum(
        len(referenced_figures(nbformat.read(path, 4))) for path in (built_book / "book/executed").glob("*.ipynb")
    )
    assert sum(len(page.images) for page in reader.pages) >= figures, "the PDF misses figures"
    assert "abi-reproduced.pdf" in (html / PAGES[0]).read_text(), "the front page does not link the PDF"
