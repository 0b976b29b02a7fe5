"""Benchmark: how the cost of training and evaluation grows with module size and data.

* domain stage (cross-entropy through the frozen head) and calibration (corrMSE on cached
  features) per step, against the bottleneck width (taps fixed) and the number of taps
  (bottleneck fixed), each point in a fresh process so its peak memory is its own;
* the NIB metric against the number of evaluation windows.

Features are random arrays of the real model's shape (timing does not depend on their values).
The growth of each curve is summarised by the exponent k of a least-squares fit of
log(time) = k log(x) + c (k = 1 linear, k = 2 quadratic).

Run: ``make benchmarks`` or ``python -m benchmarks.scaling [--device cuda --shape-only]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from abi.paths import REPO_ROOT
from benchmarks.common import peak_rss_mib, timed, write_section

BOTTLENECKS = (256, 512, 1024, 2048, 4096)
TAP_COUNTS = (1, 2, 3, 4, 5, 6)
NIB_WINDOWS = (2, 4, 8, 16)


def _fake_features(directory: Path, n: int, t: int, k: int, d: int, vocab: int, device: str = "cpu"):
    """A FeatureSet of random tap states, without any backbone run; its batches land on ``device``
    (the cache stays in host memory, as in training, so the host-to-device copy is timed too)."""
    from abi.features import FeatureSet, Windows

    class DeviceFeatureSet(FeatureSet):
        def batch(self, index):
            return tuple(t.to(device) for t in super().batch(index))

    rng = np.random.default_rng(0)
    np.save(directory / "taps.npy", rng.standard_normal((n, t, k, d), dtype=np.float32))
    np.save(directory / "final.npy", rng.standard_normal((n, t, d), dtype=np.float32))
    windows = Windows.causal(torch.from_numpy(rng.integers(0, vocab, (n, t))))
    return DeviceFeatureSet(directory, windows, tuple(range(1, k + 1)))


def measure_point(
    stage: str, bottleneck: int, taps: int, backbone_name: str, device: str, shape_only: bool, steps: int
) -> dict:
    """Time one configuration (run in its own process by :func:`_subprocess_point`)."""
    from abi.module import ABIModule, ModuleConfig
    from abi.schedule import PhaseSchedule
    from abi.train import calibrate, train_domain_stage
    from benchmarks.models import benchmark_backbone

    backbone = benchmark_backbone(backbone_name, device, shape_only) if stage == "domain" else None
    d = (
        backbone.d_model
        if backbone
        else json.loads((REPO_ROOT / "benchmarks/configs" / f"{backbone_name}.json").read_text())["hidden_size"]
    )
    module = ABIModule(ModuleConfig(d, taps, bottleneck), seed=0).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        features = _fake_features(Path(tmp), 16, 128, taps, d, 1000, device)
        if stage == "domain":
            run = lambda: train_domain_stage(module, backbone, features, steps, batch_windows=2)  # noqa: E731
        else:
            targets = torch.randn(len(features), 128, d, device=device)
            schedule = PhaseSchedule.constant(steps, 1e-4)
            run = lambda: calibrate(module, features, targets, schedule, batch_windows=8)  # noqa: E731
        timing = timed(run, repeats=3, device=device)
    per_step = {k: v / steps for k, v in timing.items() if k.endswith("_s")}
    memory = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else peak_rss_mib()
    return {
        "stage": stage,
        "bottleneck": bottleneck,
        "taps": taps,
        "per_step": per_step,
        "peak_memory_mib": memory,
        "module_parameters": sum(p.numel() for p in module.parameters()),
    }


def _subprocess_point(**kwargs) -> dict:
    """Each point in a fresh interpreter: its peak memory is not the maximum of earlier points."""
    code = (
        "import json, sys; from benchmarks.scaling import measure_point; "
        "print('RESULT', json.dumps(measure_point(**json.loads(sys.argv[1]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs)], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"scaling point {kwargs} failed:\n{out.stderr[-2000:]}")
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT"))[7:])


def growth_exponent(x: list[float], y: list[float]) -> dict[str, float]:
    """Slope of log y on log x, with its standard error: 1 is linear, 2 quadratic."""
    fit = stats.linregress(np.log(x), np.log(y))
    return {"exponent": float(fit.slope), "stderr": float(fit.stderr), "r2": float(fit.rvalue**2)}


def nib_curve(device: str, vocab: int = 49_152, positions: int = 128) -> list[dict]:
    from abi.nib import nib_position_metrics

    points = []
    for windows in NIB_WINDOWS:
        anchor = torch.randn(windows * positions, vocab, device=device) * 3
        candidate = anchor + torch.randn_like(anchor) * 0.7
        timing = timed(lambda a=anchor, c=candidate: nib_position_metrics(a, c), repeats=3, device=device)
        points.append({"windows": windows, "positions": windows * positions, "vocab": vocab, "time": timing})
        print(f"NIB, {windows} windows: {timing['median_s']:.2f} s")
    return points


def run(backbone: str, device: str, shape_only: bool, steps: int) -> dict:
    curves: dict[str, list[dict]] = {}
    for stage in ("domain", "calibration"):
        for axis, values in (("bottleneck", BOTTLENECKS), ("taps", TAP_COUNTS)):
            points = []
            for value in values:
                bottleneck, taps = (value, 6) if axis == "bottleneck" else (512, value)
                point = _subprocess_point(
                    stage=stage,
                    bottleneck=bottleneck,
                    taps=taps,
                    backbone_name=backbone,
                    device=device,
                    shape_only=shape_only,
                    steps=steps,
                )
                points.append(point)
                print(
                    f"{stage}, {axis}={value}: {point['per_step']['median_s'] * 1000:.1f} ms/step, "
                    f"{point['peak_memory_mib']:.0f} MiB"
                )
            curves[f"{stage}_vs_{axis}"] = points
    fits = {
        name: growth_exponent([p[name.split("_vs_")[1]] for p in pts], [p["per_step"]["median_s"] for p in pts])
        for name, pts in curves.items()
    }
    nib = nib_curve(device)
    fits["nib_vs_windows"] = growth_exponent([p["windows"] for p in nib], [p["time"]["median_s"] for p in nib])
    return {
        "backbone": backbone,
        "shape_only": shape_only,
        "steps_per_point": steps,
        "curves": curves,
        "nib_vs_windows": nib,
        "growth": fits,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape-only", action="store_true")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    record = run(args.backbone, args.device, args.shape_only, args.steps)
    write_section(args.device, "scaling", record)
    for name, fit in record["growth"].items():
        print(f"{name}: time ~ x^{fit['exponent']:.2f} (r2 {fit['r2']:.3f})")
    return record


if __name__ == "__main__":
    main()
