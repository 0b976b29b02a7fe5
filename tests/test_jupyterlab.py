"""Editing a claim notebook in JupyterLab, as a user does, in a real browser.

``make lab``'s server (abi/lab.py) serves a temporary copy of notebooks/01_core_nib.ipynb with its
jupytext pair and config; JupyterLab's settings, workspaces, runtime and config folders are temporary
too (the user's own are neither read nor written). Headless Chromium opens the notebook; the parameters
cell is edited by typing into its editor (the smoke profile, a scratch results folder); Run All Cells
runs it with the project's kernel; Ctrl+S saves it. The saved file must hold the edit and every cell's
output, with no error, its paired .py the edit, and the scratch folder the result. The page may not
reach any other host. About 2.5 minutes on 2 idle cores when the smoke run's caches under .cache/ are
cold (the run itself is most of it), 40 s when they are warm.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import nbformat
import pytest

from abi import lab
from abi.book_assets import CHROMIUM, CHROMIUM_FLAGS, OFFLINE_RESOLVER
from abi.paths import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "01_core_nib.ipynb"
# Its jupytext pair and the pairing config: JupyterLab's jupytext extension rewrites the pair on save.
PAIRED = (REPO_ROOT / "notebooks" / "01_core_nib.py", REPO_ROOT / "notebooks" / "jupytext.toml")
# The opening of abi/reports/core_nib.py's verdict_sentence, as rendered (the code span is plain text).
VERDICT_TEXT = "Verdict at the smoke profile"
VERDICT_MARKDOWN = "Verdict at the `smoke` profile"
PARAMETERS_MARK = "# Parameters (papermill)"
RUN_TIMEOUT_S = 420
LOCAL_HOSTS = {"127.0.0.1", "localhost"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing; `make setup` installs it (Debian's chromium package)"
    ),
]


@dataclass(frozen=True)
class Lab:
    """A running JupyterLab server: where it is, how to log in, what it serves."""

    port: int
    token: str
    root: Path

    def url(self, path: str) -> str:
        return lab.page_url(self.port, self.token, path)

    def api(self, path: str) -> object:
        """A GET of the server's REST API, as JSON."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)


def _hermetic_environment(state: Path) -> dict[str, str]:
    """Every folder JupyterLab, the server, and IPython read or write per user, under ``state``."""
    folders = {
        "JUPYTERLAB_SETTINGS_DIR": "lab-settings",
        "JUPYTERLAB_WORKSPACES_DIR": "lab-workspaces",
        "JUPYTER_RUNTIME_DIR": "runtime",
        "JUPYTER_CONFIG_DIR": "config",
        "JUPYTER_DATA_DIR": "data",
        "IPYTHONDIR": "ipython",
    }
    environ = {name: str(state / folder) for name, folder in folders.items()}
    environ["HF_HUB_OFFLINE"] = "1"  # a hub name fails at once, never waits on the network
    return environ


def _answer_news_question(settings_dir: Path) -> None:
    """Answer "No" ahead of time to the news toast JupyterLab shows in a fresh profile (it asks even when
    the server fetches no news, and it can sit over what the test clicks)."""
    path = settings_dir / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"fetchNews": "false"}))


@pytest.fixture
def jupyterlab(tmp_path: Path) -> Iterator[Lab]:
    """A JupyterLab server whose root holds a fresh copy of the notebook; stopped (kernels too) whatever happens."""
    root = tmp_path / "root"
    root.mkdir()
    for source in (NOTEBOOK, *PAIRED):  # the notebook first: a pair older than its notebook is refused
        shutil.copy(source, root / source.name)
    port, token = lab.any_free_port(), secrets.token_hex(16)
    log_path = tmp_path / "jupyterlab.log"
    command = lab.lab_command(root, port, token, default_url="/lab")
    environ = lab.server_environment(_hermetic_environment(tmp_path / "jupyter-state"))
    _answer_news_question(Path(environ["JUPYTERLAB_SETTINGS_DIR"]))
    with log_path.open("w") as log:
        server = lab.start_server(command, environ, stdout=log, stderr=subprocess.STDOUT)
        try:
            started = time.monotonic()
            lab.wait_until_up(server, port, token)
            print(f"JupyterLab answered after {time.monotonic() - started:.1f} s")
            yield Lab(port, token, root)
        finally:
            lab.stop_server(server)
            print(f"--- JupyterLab's log (last 40 lines of {log_path}) ---")  # shown when the test fails
            print("\n".join(log_path.read_text().splitlines()[-40:]))


@pytest.fixture
def page(playwright) -> Iterator[tuple[object, list[str]]]:
    """A page of Debian's Chromium (fresh profile) that cannot resolve other hosts; requests to them are
    recorded. (Not intercepted with a route: a routed request waits for this process to answer it,
    and this process answers only inside playwright calls, so a save could hang through a wait.)"""
    external: list[str] = []

    def record_external(request) -> None:
        if urlsplit(request.url).hostname not in LOCAL_HOSTS:
            external.append(request.url)

    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=[*CHROMIUM_FLAGS, OFFLINE_RESOLVER]
    )
    try:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.on("request", record_external)
        yield context.new_page(), external
    finally:
        browser.close()


def _accept_dialogs(page) -> None:
    """Accept any JupyterLab dialog in the way (a kernel choice: the default, the notebook's python3)."""
    for button in page.locator(".jp-Dialog .jp-mod-accept").all():
        button.click()


def _kernel_states(jupyterlab: Lab) -> list[str]:
    return [kernel["execution_state"] for kernel in jupyterlab.api("/api/kernels")]


def _wait_for_idle_kernel(page, jupyterlab: Lab, timeout_s: float = 60.0) -> None:
    """Until the notebook's kernel is started and idle (a Run All before that could be dropped)."""
    deadline = time.monotonic() + timeout_s
    while _kernel_states(jupyterlab) != ["idle"]:
        assert time.monotonic() < deadline, f"no idle kernel after {timeout_s:.0f} s: {_kernel_states(jupyterlab)}"
        _accept_dialogs(page)
        page.wait_for_timeout(500)


def _replace_line(cell, old: str, new: str) -> None:
    """Select the editor line that reads ``old`` and type ``new`` over it, as a user would."""
    line = cell.locator(".cm-line", has_text=old)
    assert line.count() == 1, f"the parameters cell has {line.count()} lines reading {old!r}"
    line.click()
    page = cell.page
    page.keyboard.press("End")
    page.keyboard.press("Shift+Home")
    page.keyboard.type(new)


def _edit_parameters(page, results_dir: Path) -> None:
    """Set ``profile`` and ``results_dir`` in the parameters cell's editor."""
    cell = page.locator(".jp-CodeCell", has=page.locator(".cm-line", has_text=PARAMETERS_MARK))
    assert cell.count() == 1, "no single parameters cell on the page"
    _replace_line(cell, 'profile = "cpu"', 'profile = "smoke"')
    _replace_line(cell, "results_dir = None", f'results_dir = "{results_dir}"')
    source = cell.locator(".cm-content").inner_text()
    assert 'profile = "smoke"' in source and f'results_dir = "{results_dir}"' in source, source


def _run_all_cells(page) -> None:
    """Run -> Run All Cells, through the menu bar."""
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()


def _shown_errors(page) -> list[str]:
    """Error and stderr outputs on the page (tracebacks are shown as stderr), shortened."""
    outputs = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').all()
    return [output.inner_text()[-1500:] for output in outputs]


def _run_has_stopped(page, jupyterlab: Lab) -> bool:
    """True when no cell waits to run and the kernel is idle (after an error, Run All drops the rest)."""
    return page.locator(".jp-InputPrompt", has_text="[*]").count() == 0 and _kernel_states(jupyterlab) == ["idle"]


def _wait_for_verdict(page, jupyterlab: Lab) -> float:
    """Seconds until the verdict is on the page; fails soon after the run stops without it (an error)."""
    verdict = page.locator(".jp-OutputArea-output", has_text=VERDICT_TEXT)
    start, stopped_checks = time.monotonic(), 0
    while verdict.count() == 0:
        elapsed = time.monotonic() - start
        assert elapsed < RUN_TIMEOUT_S, f"no verdict after {RUN_TIMEOUT_S} s; shown errors: {_shown_errors(page)}"
        # Seen stopped three times running, a second apart: not the instant between two cells.
        stopped_checks = stopped_checks + 1 if elapsed > 5 and _run_has_stopped(page, jupyterlab) else 0
        if stopped_checks >= 3 and verdict.count() == 0:
            pytest.fail(f"the run stopped without a verdict; shown errors: {_shown_errors(page)}")
        page.wait_for_timeout(1000)
    return time.monotonic() - start


def _saved_notebook(page, path: Path, timeout_s: float = 30.0) -> nbformat.NotebookNode:
    """The notebook on disk once a save has written the verdict's output into it (a screenshot if not)."""
    deadline = time.monotonic() + timeout_s
    while True:
        notebook = nbformat.read(path, as_version=4)
        if notebook.cells[-1].get("outputs"):
            return notebook
        if time.monotonic() > deadline:
            screenshot = path.parent.parent / "not-saved.png"
            page.screenshot(path=str(screenshot))
            pytest.fail(f"{path.name} on disk has no verdict output {timeout_s:.0f} s after the save; see {screenshot}")
        page.wait_for_timeout(500)


def _kernel_executable(kernel_id: str) -> str:
    """The interpreter a kernel runs on: the first argument of the process named by its connection file."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = cmdline.read_bytes().split(b"\0")
            if any(arg.endswith(f"kernel-{kernel_id}.json".encode()) for arg in argv):
                return argv[0].decode()
    return "(no process found)"


def test_edit_run_and_save_in_jupyterlab(jupyterlab: Lab, page: tuple, tmp_path: Path) -> None:
    page, external = page
    results_dir = tmp_path / "scratch-results"
    clock, phases = time.monotonic(), {}
    page.goto(jupyterlab.url(f"/lab/tree/{NOTEBOOK.name}"))
    page.locator(".jp-Notebook .cm-line", has_text=PARAMETERS_MARK).wait_for(timeout=60_000)
    _wait_for_idle_kernel(page, jupyterlab)
    kernel = jupyterlab.api("/api/kernels")[0]
    assert kernel["name"] == "python3", kernel
    assert _kernel_executable(kernel["id"]) == sys.executable, "the kernel is not the project's interpreter"
    phases["page and kernel"] = time.monotonic() - clock

    _edit_parameters(page, results_dir)
    _run_all_cells(page)
    phases["edit"] = time.monotonic() - clock - sum(phases.values())
    phases["run"] = _wait_for_verdict(page, jupyterlab)
    page.locator(".lm-TabBar-tab", has_text=NOTEBOOK.name).click()  # the notebook has the focus, for Ctrl+S
    page.keyboard.press("Control+s")
    saved = _saved_notebook(page, jupyterlab.root / NOTEBOOK.name)
    phases["save"] = time.monotonic() - clock - sum(phases.values())
    print("seconds per phase: " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in phases.items()))
    parameters = next(cell for cell in saved.cells if "parameters" in cell.metadata.get("tags", []))
    assert 'profile = "smoke"' in parameters.source, parameters.source
    assert f'results_dir = "{results_dir}"' in parameters.source, parameters.source
    errors = [
        f"cell {number}: {output.ename}: {output.evalue}"
        for number, cell in enumerate(saved.cells)
        for output in cell.get("outputs", [])
        if output.output_type == "error"
    ]
    assert not errors, f"the notebook raised: {errors}"
    unrun = [number for number, cell in enumerate(saved.cells) if cell.cell_type == "code" and not cell.execution_count]
    assert not unrun, f"code cells not run: {unrun}"
    verdict_markdown = [output.data.get("text/markdown", "") for output in saved.cells[-1].outputs if "data" in output]
    assert any(VERDICT_MARKDOWN in text for text in verdict_markdown), verdict_markdown
    paired_source = (jupyterlab.root / PAIRED[0].name).read_text()
    assert 'profile = "smoke"' in paired_source, "the jupytext pair was not saved with the notebook"
    assert (results_dir / "core_nib.json").is_file(), f"no core_nib.json in {results_dir}"
    assert not external, f"the page reached other hosts: {external}"
