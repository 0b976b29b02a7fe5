"""Benchmark: one cold ``make book`` on this machine, timed end to end.

A fresh clone of HEAD in a scratch folder gets only what ``make setup`` installs: the environment (this
checkout's ``.venv``, with the clone first on ``PYTHONPATH`` so the clone's own code runs) and the caches
that setup fills (model copies, quantized files, tokenizers, the corpus, MathJax). Everything the
notebooks compute starts empty: tap features, fine-tuned backbones, trained modules, pooled sentences,
token streams, kept settings. ``make book FORCE=1`` then re-runs every notebook (a clone's committed
stamps are current, so a plain ``make book`` would skip them all) and builds the book and its PDF.

Recorded in ``results/benchmarks.json`` (section ``cold_build``): the wall time against the 150-min
target, each notebook's wall time from its stamp, the lanes' jobs and threads, and whether the results
the cold run wrote equal the committed ones value for value, timings and cache flags aside (a cold run
that trains every module again must land on the same numbers).

Run: ``make cold-build`` or ``python -m benchmarks.cold_build`` (2-3 hours on 2 cores; do nothing else
heavy meanwhile: the time counts whatever shares the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from abi.paths import REPO_ROOT
from abi.pipeline import KERNEL_THREADS, notebook_names
from benchmarks.common import results_path, write_section

TARGET_MINUTES = 150  # issue 12: all claims, both regimes, cold caches, 2 cores
# What `make setup` fills (abi.cli prefetch, npm): a cold build starts with these and nothing else.
SETUP_CACHES = ("models", "gguf", "tokenizers", "corpora", "mathjax")
# Keys whose values are the run's cost or cache state, not its science; ``content_sha256`` is a digest
# over the whole file, run state included, so it differs whenever a timing does.
RUN_STATE_KEY = re.compile(
    r"(_s|seconds|s_per_step)$"
    r"|^(provenance|resources|from_cache|time|timings|machine|git_commit|peak_rss_mib|command|content_sha256)$"
)


def prepare_clone(workdir: Path) -> str:
    """A fresh clone of HEAD at ``workdir`` with the environment and setup caches linked in; returns its commit."""
    if workdir.exists():
        shutil.rmtree(workdir)
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(workdir)], check=True)
    (workdir / ".venv").symlink_to(REPO_ROOT / ".venv")
    (workdir / ".cache").mkdir()
    for name in SETUP_CACHES:
        source = REPO_ROOT / ".cache" / name
        if not source.is_dir():
            raise SystemExit(f"{source} is missing: run `make setup` in {REPO_ROOT} first.")
        (workdir / ".cache" / name).symlink_to(source)
    return _head(workdir)


def differences(committed: Any, rebuilt: Any, path: str = "") -> list[str]:
    """Paths where two result trees differ, run-state keys (``RUN_STATE_KEY``) skipped."""
    if isinstance(committed, dict) and isinstance(rebuilt, dict):
        found = []
        for key in sorted(set(committed) | set(rebuilt)):
            if RUN_STATE_KEY.search(key):
                continue
            if key not in committed or key not in rebuilt:
                found.append(f"{path}/{key} (only in {'rebuilt' if key in rebuilt else 'committed'})")
                continue
            found += differences(committed[key], rebuilt[key], f"{path}/{key}")
        return found
    if isinstance(committed, list) and isinstance(rebuilt, list):
        if len(committed) != len(rebuilt):
            return [f"{path} (length {len(committed)} vs {len(rebuilt)})"]
        return [diff for i, (a, b) in enumerate(zip(committed, rebuilt)) for diff in differences(a, b, f"{path}[{i}]")]
    return [] if committed == rebuilt else [f"{path} ({committed!r} vs {rebuilt!r})"]


def compare_results(committed: dict[str, Any], results_dir: Path) -> dict[str, Any]:
    """Per claim result file: identical to the committed one (science only), or the first differences and
    every difference in a verdict (a changed number matters less than a changed conclusion)."""
    report = {}
    for name, before in sorted(committed.items()):
        path = results_dir / name
        after = json.loads(path.read_text()) if path.is_file() else None
        found = ["(not written)"] if after is None else differences(before, after)
        verdicts = [diff for diff in found if "verdict" in diff.split(" (")[0]]
        report[name] = {
            "identical": not found,
            "differences": len(found),
            "first": found[:10],
            "verdict_differences": verdicts,
        }
    return report


def committed_results(workdir: Path) -> dict[str, Any]:
    """The claim result files as the clone's HEAD commits them (what the cold run must land on again)."""
    listing = subprocess.run(
        ["git", "ls-tree", "--name-only", "HEAD", "results/"], cwd=workdir, capture_output=True, text=True, check=True
    )
    names = [Path(line).name for line in listing.stdout.split()]
    claims = [name for name in names if name.endswith(".json") and not name.startswith("bench")]
    shown = {
        name: subprocess.run(["git", "show", f"HEAD:results/{name}"], cwd=workdir, capture_output=True, check=True)
        for name in claims
    }
    return {name: json.loads(done.stdout) for name, done in shown.items()}


def compare_again(workdir: Path, against_checkout: bool = False) -> None:
    """Re-check a finished cold tree and update the recorded section; the timing stays the one measured.

    By default against the clone's own commit (after a change to the comparison: ``results_match_committed``);
    with ``against_checkout``, against the results this checkout commits now (after committed results were
    regenerated: ``results_match_checkout``, with the checkout's commit).
    """
    path = results_path("cpu")
    recorded = json.loads(path.read_text()).get("sections", {}).get("cold_build") if path.is_file() else None
    if not recorded:
        raise SystemExit(f"{path} has no cold_build section: run `make cold-build` first.")
    if not (workdir / ".git").is_dir():
        raise SystemExit(f"{workdir} holds no cold-build clone: run `make cold-build` first.")
    if (head := _head(workdir)) != recorded["commit"]:
        raise SystemExit(f"{workdir} is at {head[:12]}, the record at {recorded['commit'][:12]}.")
    kept = {k: v for k, v in recorded.items() if k not in ("provenance", "command")}
    if against_checkout:
        matches = compare_results(committed_results(REPO_ROOT), workdir / "results")
        record = {**kept, "results_match_checkout": {"commit": _head(REPO_ROOT), "files": matches}}
    else:
        matches = compare_results(committed_results(workdir), workdir / "results")
        record = {**kept, "results_match_committed": matches, "results_rechecked": True}
    print(json.dumps(matches, indent=1))
    print(f"written to {write_section('cpu', 'cold_build', record)}")


def _head(repo: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/abi-cold-build"))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--compare-only", action="store_true", help="re-check the results of the cold tree already in --workdir"
    )
    parser.add_argument(
        "--against-checkout",
        action="store_true",
        help="with --compare-only: compare with the results this checkout commits, not the clone's",
    )
    args = parser.parse_args(argv)
    if args.compare_only:
        compare_again(args.workdir, args.against_checkout)
        return
    commit = prepare_clone(args.workdir)
    committed = committed_results(args.workdir)
    command = ["make", "-o", ".venv/.setup-done", "book", "FORCE=1", f"JOBS={args.jobs}", "PROFILE=cpu"]
    env = {**os.environ, "PYTHONPATH": str(args.workdir)}
    print(f"cold build of {commit[:12]} in {args.workdir}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    code = subprocess.run(command, cwd=args.workdir, env=env).returncode
    wall = round(time.perf_counter() - start, 1)
    executed = args.workdir / "book" / "executed"
    notebooks = {}
    for name in notebook_names():
        stamp = executed / f".{name}.inputs.json"
        notebooks[name] = json.loads(stamp.read_text()).get("wall_s") if stamp.is_file() else None
    record = {
        "commit": commit,
        "profile": "cpu",
        "jobs": args.jobs,
        "threads_per_notebook": KERNEL_THREADS,
        "setup_caches_kept": list(SETUP_CACHES),
        "exit_code": code,
        "wall_s": wall,
        "target_s": TARGET_MINUTES * 60,
        "meets_target": code == 0 and wall <= TARGET_MINUTES * 60,
        "notebook_wall_s": notebooks,
        "results_match_committed": compare_results(committed, args.workdir / "results"),
        "source": "measured in this run",
    }
    print(json.dumps(record, indent=1))
    print(f"written to {write_section('cpu', 'cold_build', record)}")
    if code:
        raise SystemExit(f"the cold build failed (exit {code}); its tree is kept at {args.workdir}.")


if __name__ == "__main__":
    main()
