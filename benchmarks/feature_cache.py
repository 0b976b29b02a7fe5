"""Benchmark: a corrMSE calibration step on cached tap features vs recomputing the frozen backbone.

The original recomputed the backbone (and the anchor) at every calibration step; we compute the
tap features once and calibrate on the cache. Both steps below do the same optimisation work on
the same batch shape; only where the features come from differs. Reports medians with min-max
and the break-even number of steps after which building the cache has paid for itself.

Run: ``make benchmarks`` (or ``python benchmarks/feature_cache.py --backbone smollm2-135m``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from abi.backbones import BackboneUnavailableError, load_backbone
from abi.features import Windows, extract_features
from abi.module import ABIModule, ModuleConfig
from abi.paths import results_dir
from abi.results import atomic_write_text, provenance


def _timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _summary(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}


def run(backbone_name: str, batch_windows: int, window_len: int, n_windows: int, repeats: int) -> dict:
    try:
        backbone = load_backbone(backbone_name)
    except BackboneUnavailableError as error:
        raise SystemExit(f"{error}\nRun `make setup` first (it installs and caches the offline models).") from None
    taps = list(range(backbone.n_layers - 5, backbone.n_layers + 1))
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, backbone.vocab_size, (n_windows, window_len), generator=generator)
    windows = Windows.causal(tokens)
    d = backbone.d_model
    anchor = ABIModule(ModuleConfig(d, 1, 256, per_tap_norm=False), seed=0).eval()
    candidate = ABIModule(ModuleConfig(d, len(taps), 512), seed=1)
    optimizer = torch.optim.AdamW(candidate.parameters(), lr=1e-4)
    index = torch.arange(batch_windows)

    def optimise(tap_states: torch.Tensor, target: torch.Tensor) -> None:
        loss = (candidate(tap_states) - target).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(candidate.parameters(), 1.0)
        optimizer.step()

    start = time.perf_counter()
    features = extract_features(backbone, windows, taps, root=Path("/tmp/abi-bench-features") / str(time.time_ns()))
    with torch.no_grad():
        cached_targets = torch.cat([anchor(t[..., -1:, :]) for _, t, _, _ in features.iter_batches(16)])
    cache_build_s = time.perf_counter() - start

    def cached_step() -> None:
        tap_states, _, _ = features.batch(index)
        optimise(tap_states, cached_targets[index])

    def recompute_step() -> None:
        with torch.no_grad():
            out = backbone.tap_features(windows.input_ids[index], taps)
            target = anchor(out.taps[..., -1:, :])
        optimise(out.taps, target)

    cached = _summary(_timed(cached_step, repeats * 4))
    recompute = _summary(_timed(recompute_step, repeats))
    saved_per_step = recompute["median_s"] - cached["median_s"]
    return {
        "backbone": backbone_name,
        "taps": taps,
        "batch": {"windows": batch_windows, "window_len": window_len},
        "cache": {"n_windows": n_windows, "build_s": cache_build_s},
        "cached_step": cached,
        "recompute_step": recompute,
        "speedup_median": recompute["median_s"] / cached["median_s"],
        "break_even_steps": cache_build_s / saved_per_step if saved_per_step > 0 else None,
        "target_speedup": 10.0,
        "meets_target": recompute["median_s"] / cached["median_s"] >= 10.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--batch-windows", type=int, default=8)
    parser.add_argument("--window-len", type=int, default=128)
    parser.add_argument("--cache-windows", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    record = run(args.backbone, args.batch_windows, args.window_len, args.cache_windows, args.repeats)
    record["provenance"] = provenance()
    path = results_dir() / "benchmarks.json"
    existing = json.loads(path.read_text()) if path.is_file() else {}
    existing["feature_cache"] = record
    atomic_write_text(path, json.dumps(existing, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("cached_step", "recompute_step", "speedup_median", "break_even_steps")},
                     indent=1))


if __name__ == "__main__":
    main()
