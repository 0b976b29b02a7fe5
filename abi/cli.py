"""Command line: ``abi prefetch | run-notebooks | build-book | verify`` (the Makefile's targets)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from abi.paths import REPO_ROOT


def _prefetch(args: argparse.Namespace) -> None:
    """Fill the caches once: corpus download and the fp32 copy of every offline model."""
    from abi.backbones import load_backbone
    from abi.data import load_code_corpus

    corpus = load_code_corpus()
    print(f"corpus: {corpus.identity['n_files']} files, {corpus.identity['n_chars']:,} characters")
    for name in args.models:
        backbone = load_backbone(name)
        print(f"model {name}: {backbone.n_layers} layers, d={backbone.d_model}, vocabulary {backbone.vocab_size}")


def _run_notebooks(args: argparse.Namespace) -> None:
    from abi.pipeline import BuildLayout, run_notebooks

    layout = BuildLayout.for_profile(args.profile, Path(args.scratch) if args.scratch else None)
    names = tuple(args.notebooks) if args.notebooks else None
    threads = {} if args.threads is None else {"threads": args.threads}
    run_notebooks(layout, force=args.force, names=names, jobs=args.jobs, **threads)


def _build_book(args: argparse.Namespace) -> None:
    from abi.pipeline import BuildLayout, build_book

    layout = BuildLayout.for_profile(args.profile, Path(args.scratch) if args.scratch else None)
    print(f"book: {build_book(layout)}")


def _verify(args: argparse.Namespace) -> None:
    """Print one line per check (every problem, not just the first); exit 1 when any failed."""
    from abi.verify import Finding, verify_results

    results = Path(args.results_dir)
    try:
        findings = verify_results(results)
    except Exception as error:  # the verifier reports; it must never end in a traceback
        findings = [Finding(results, False, f"{results}: the verifier failed ({type(error).__name__}: {error}).")]
    if not findings:
        raise SystemExit(f"nothing to verify under {results}; run `make book` first.")
    for finding in findings:
        print(f"OK   {finding.path}" if finding.ok else f"FAIL {finding.message}")
    failures = sum(not f.ok for f in findings)
    if failures:
        raise SystemExit(f"{failures} problem(s) found; verification failed.")
    print(f"all {len(findings)} result and figure files verified")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="abi", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    prefetch = commands.add_parser("prefetch", help="download the corpus and de-quantize offline models once")
    prefetch.add_argument("--models", nargs="*", default=["smollm2-135m"])
    prefetch.set_defaults(func=_prefetch)
    for name, func, text in (
        ("run-notebooks", _run_notebooks, "execute the claim notebooks with papermill"),
        ("build-book", _build_book, "build the HTML book with jupyter-book"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--profile", default="cpu")
        sub.add_argument("--scratch", default=None, help="write executed notebooks/results/book here")
        sub.add_argument("--force", action="store_true", help="re-execute even if inputs are unchanged")
        sub.add_argument("--notebooks", nargs="*", help="only these notebooks (names without .ipynb)")
        sub.set_defaults(func=func)
    lanes = commands.choices["run-notebooks"]
    lanes.add_argument("--jobs", type=int, default=1, help="claim notebooks run side by side (default 1)")
    lanes.add_argument("--threads", type=int, help="torch threads per notebook (default 1; 0: torch's default)")
    verify = commands.add_parser("verify", help="recompute every summary in results/*.json from raw values")
    verify.add_argument("--results-dir", default=str(REPO_ROOT / "results"))
    verify.set_defaults(func=_verify)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
