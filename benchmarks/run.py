"""The whole benchmark suite in one command (``make benchmarks``), under 15 minutes on 2 cores.

Sections: feature cache vs recomputation, NIB evaluator vs the per-position reference, scaling
curves, and (on the CPU) end-to-end notebook costs. With ``--device cuda`` the same suite runs on
an accelerator and writes ``results/benchmarks-gpu.json`` instead; CPU and GPU figures are never
mixed. ``--shape-only`` times random-weight models of the real shapes (for machines without the
offline model packages).
"""

from __future__ import annotations

import argparse
import time

from benchmarks import end_to_end, feature_cache, nib_evaluator, scaling
from benchmarks.common import results_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape-only", action="store_true")
    parser.add_argument("--skip", nargs="*", default=[], choices=["feature_cache", "nib", "scaling", "end_to_end"])
    args = parser.parse_args(argv)
    device_args = ["--device", args.device] + (["--shape-only"] if args.shape_only else [])
    start = time.perf_counter()
    if "feature_cache" not in args.skip:
        feature_cache.main(device_args)
    if "nib" not in args.skip:
        nib_evaluator.main(["--device", args.device])
    if "scaling" not in args.skip:
        scaling.main(device_args)
    if args.device == "cpu" and "end_to_end" not in args.skip:
        end_to_end.main(["--profiles", "smoke", "cpu", "--tests"])
    print(f"benchmark suite: {(time.perf_counter() - start) / 60:.1f} min -> {results_path(args.device)}")


if __name__ == "__main__":
    main()
