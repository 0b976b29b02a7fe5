"""What the built book needs to render with no network: a local MathJax, and a headless browser.

By default Sphinx loads MathJax from a CDN, so the math of an offline copy of the book stays raw TeX.
``make setup`` installs the npm ``mathjax`` package (pinned) under ``.cache/``, and every build copies
it into the book's static files, where ``_config.yml`` (``mathjax_path``, ``html_static_path``)
points. After a build, headless Chromium (Debian's package, also installed by ``make setup``) takes
a screenshot of the front page: a quick look at what a reader sees, without opening a browser.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from abi.paths import REPO_ROOT

MATHJAX_VERSION = "3.2.2"
# Where `make setup` runs `npm install --prefix .cache/mathjax mathjax@3.2.2` (keep the two in step).
MATHJAX_PACKAGE = REPO_ROOT / ".cache" / "mathjax" / "node_modules" / "mathjax"
# The combined component the book loads; every other file it needs lives in es5/'s subfolders.
MATHJAX_ENTRY = "tex-mml-chtml.js"
# Relative to the book root; `html_static_path` in _config.yml names the same folder. It lies under
# _build/ so that it is never committed and never read as a book source.
STATIC_DIR = Path("_build") / "offline_static"
CHROMIUM = Path("/usr/bin/chromium")
# Width and height of the front-page screenshot: tall enough to show the first display equations.
SCREENSHOT_SIZE = (1280, 1600)
# Headless, and nothing the browser does on its own behalf (updates, sync, QUIC probes) goes out.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# Any host name other than localhost fails to resolve: a page that still needs the network shows it.
OFFLINE_RESOLVER = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"


def local_mathjax() -> Path:
    """The ``es5/`` folder of the pinned local MathJax; fails with the fix when it is missing."""
    manifest = MATHJAX_PACKAGE / "package.json"
    if not manifest.is_file():
        raise SystemExit(
            f"MathJax {MATHJAX_VERSION} is not installed at {MATHJAX_PACKAGE}; the book serves it locally so that"
            " math renders offline. Run `make setup` (its MathJax step: "
            f"`npm install --prefix .cache/mathjax mathjax@{MATHJAX_VERSION}`)."
        )
    version = json.loads(manifest.read_text())["version"]
    if version != MATHJAX_VERSION:
        raise SystemExit(
            f"MathJax {version} is installed at {MATHJAX_PACKAGE}, but the book pins {MATHJAX_VERSION}. "
            "Run `rm -rf .cache/mathjax && make setup`."
        )
    return MATHJAX_PACKAGE / "es5"


def install_mathjax(book_root: Path) -> Path:
    """Copy the local MathJax into the book's static files (fresh each build); returns the entry script.

    Only the entry component and the folders it loads from are copied: the other combined
    components would only add megabytes to the HTML output.
    """
    source = local_mathjax()
    target = Path(book_root) / STATIC_DIR / "mathjax"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copy2(source / MATHJAX_ENTRY, target / MATHJAX_ENTRY)
    shutil.copy2(source.parent / "LICENSE", target / "LICENSE")  # Apache-2.0: it travels with the copy
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        shutil.copytree(folder, target / folder.name)
    return target / MATHJAX_ENTRY


def chapter_pages(book_root: Path) -> list[str]:
    """HTML paths (relative to ``_build/html``) of the toc's root and every chapter, in toc order."""
    toc = yaml.safe_load((Path(book_root) / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", [toc]):
        files += [entry["file"] for entry in part.get("chapters", [])]
    return [f"{Path(name).with_suffix('')}.html" for name in files]


def jupyter_book_build(book_root: Path, config: Path, builder: str = "html") -> list[str]:
    """The jupyter-book command that builds the book with ``builder`` from ``config``, into ``_build/``.

    ``--all`` writes every page and static file afresh (seconds): an incremental build with no changed page
    skips copying static files, so an edited stylesheet would never reach the pages.
    """
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    root = str(book_root)
    return [
        str(jupyter_book),
        "build",
        root,
        "--path-output",
        root,
        "--all",
        "--builder",
        builder,
        "--config",
        str(config),
    ]


def chromium_command(user_data_dir: Path, *args: str) -> list[str]:
    """Headless Chromium with the project's offline flags and a fresh, throw-away profile."""
    return [str(CHROMIUM), *CHROMIUM_FLAGS, OFFLINE_RESOLVER, f"--user-data-dir={user_data_dir}", *args]


def screenshot(page: Path, png: Path, size: tuple[int, int] = SCREENSHOT_SIZE) -> Path:
    """Save a PNG of a local HTML page as headless Chromium draws it.

    The virtual time budget lets deferred scripts (MathJax typesetting, its web fonts) finish before
    the picture is taken; a plain ``--screenshot`` would catch the raw TeX.
    """
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="abi-chromium-") as profile:
        command = chromium_command(
            Path(profile),
            f"--screenshot={png}",
            f"--window-size={size[0]},{size[1]}",
            "--hide-scrollbars",
            "--virtual-time-budget=10000",
            Path(page).resolve().as_uri(),
        )
        subprocess.run(command, check=True, capture_output=True, timeout=120)
    if not png.is_file():
        raise RuntimeError(f"headless Chromium exited without writing {png}; run `{' '.join(command)}` to see why.")
    return png


def screenshot_front_page(book_root: Path) -> Path | None:
    """Screenshot the built front page to ``_build/front_page.png``; skipped with a note without Chromium."""
    html = Path(book_root) / "_build" / "html"
    png = Path(book_root) / "_build" / "front_page.png"
    if not CHROMIUM.exists():
        print(f"front-page screenshot skipped: {CHROMIUM} is missing (`make setup` installs it).", flush=True)
        return None
    try:
        screenshot(html / chapter_pages(book_root)[0], png)
    except (subprocess.SubprocessError, RuntimeError) as error:
        print(f"front-page screenshot failed (the book itself is built): {error}", flush=True)
        return None
    print(f"front page: {png}", flush=True)
    return png
