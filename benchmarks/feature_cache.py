"""Benchmark: a calibration step on cached tap features vs the same step recomputing the backbone.

The original recomputed the frozen backbone (and the anchor) at every calibration step; we compute
the tap features once and calibrate on the cache. Both steps do the same optimisation work on the
same batch (six taps, the claim-1 candidate); only where the features come from differs. Reported:
median ratio with min-max, and the break-even number of steps after which building the cache has
paid for itself (cache build time / time saved per step).

Run: ``make benchmarks`` or ``python -m benchmarks.feature_cache [--device cuda --shape-only]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from abi.features import Windows, extract_features
from abi.module import ABIModule, ModuleConfig
from benchmarks.common import ratio, timed, write_section
from benchmarks.models import benchmark_backbone

TARGET_SPEEDUP = 10.0


def run(
    backbone_name: str, device: str, shape_only: bool, batch_windows: int, window_len: int, n_windows: int, repeats: int
) -> dict:
    backbone = benchmark_backbone(backbone_name, device, shape_only)
    taps = list(range(backbone.n_layers - 5, backbone.n_layers + 1))
    generator = torch.Generator().manual_seed(0)
    windows = Windows.causal(torch.randint(0, backbone.vocab_size, (n_windows, window_len), generator=generator))
    d = backbone.d_model
    anchor = ABIModule(ModuleConfig(d, 1, 256, per_tap_norm=False), seed=0).to(device).eval()
    candidate = ABIModule(ModuleConfig(d, len(taps), 512), seed=1).to(device)
    optimizer = torch.optim.AdamW(candidate.parameters(), lr=1e-4)
    index = torch.arange(batch_windows)

    def optimise(tap_states: torch.Tensor, target: torch.Tensor) -> None:
        loss = (candidate(tap_states) - target).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(candidate.parameters(), 1.0)
        optimizer.step()

    with tempfile.TemporaryDirectory(prefix="abi-bench-features-") as tmp:
        start = time.perf_counter()
        features = extract_features(backbone, windows, taps, root=Path(tmp), desc="benchmark cache")
        with torch.no_grad():
            targets = torch.cat([anchor(t.to(device)[..., -1:, :]) for _, t, _, _ in features.iter_batches(16)])
        cache_build_s = time.perf_counter() - start

        def cached_step() -> None:
            tap_states, _, _ = features.batch(index)
            optimise(tap_states.to(device), targets[index.to(device)])

        def recompute_step() -> None:
            with torch.no_grad():
                out = backbone.tap_features(windows.input_ids[index].to(device), taps)
                target = anchor(out.taps[..., -1:, :])
            optimise(out.taps, target)

        cached = timed(cached_step, repeats * 4, device)
        recompute = timed(recompute_step, repeats, device)
    saved = recompute["median_s"] - cached["median_s"]
    speedup = ratio(recompute, cached)
    return {
        "backbone": backbone.describe()["name"],
        "shape_only": shape_only,
        "taps": taps,
        "batch": {"windows": batch_windows, "window_len": window_len},
        "cache": {"n_windows": n_windows, "build_s": cache_build_s},
        "cached_step": cached,
        "recompute_step": recompute,
        "speedup": speedup,
        "break_even_steps": cache_build_s / saved if saved > 0 else None,
        "target_speedup": TARGET_SPEEDUP,
        "meets_target": speedup["median"] >= TARGET_SPEEDUP,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape-only", action="store_true", help="random weights of the model's shape")
    parser.add_argument("--batch-windows", type=int, default=8)
    parser.add_argument("--window-len", type=int, default=128)
    parser.add_argument("--cache-windows", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    record = run(
        args.backbone,
        args.device,
        args.shape_only,
        args.batch_windows,
        args.window_len,
        args.cache_windows,
        args.repeats,
    )
    write_section(args.device, "feature_cache", record)
    print(
        f"feature cache: {record['speedup']['median']:.1f}x faster per step "
        f"(range {record['speedup']['min']:.1f}-{record['speedup']['max']:.1f}), "
        f"break-even after {record['break_even_steps']:.0f} steps"
    )
    return record


if __name__ == "__main__":
    main()
