"""Benchmark: our vectorised NIB metric vs a per-position implementation of the original's algorithm.

The reference walks the positions one at a time, as the original evaluator did: numpy softmax,
Jensen-Shannon and entropies from the probability vectors, top-1 by argmax, top-5 overlap through
Python sets of ``argsort`` indices. Both run on the same logits at vocabulary sizes 32k, 49k and
262k; their means must agree to 1e-6 before any timing counts.

Run: ``make benchmarks`` or ``python -m benchmarks.nib_evaluator [--device cuda]``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from abi.nib import CORE_METRICS, nib_position_metrics
from benchmarks.common import ratio, timed, write_section

VOCABS = (32_000, 49_152, 262_144)
TARGET_SPEEDUP_262K = 50.0


def reference_metrics(anchor: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """The original's per-position loop (written plainly on purpose: it is the baseline)."""
    totals = dict.fromkeys(CORE_METRICS, 0.0)
    for a, c in zip(anchor, candidate):
        p = np.exp(a - a.max())
        p /= p.sum()
        q = np.exp(c - c.max())
        q /= q.sum()
        m = 0.5 * (p + q)
        kl_pm = np.sum(np.where(p > 0, p * np.log(p / m), 0.0))
        kl_qm = np.sum(np.where(q > 0, q * np.log(q / m), 0.0))
        h_p = -np.sum(np.where(p > 0, p * np.log(p), 0.0))
        h_q = -np.sum(np.where(q > 0, q * np.log(q), 0.0))
        totals["js"] += 0.5 * (kl_pm + kl_qm)
        totals["top1"] += float(np.argmax(p) == np.argmax(q))
        totals["top5"] += len(set(np.argsort(p)[-5:]) & set(np.argsort(q)[-5:])) / 5
        totals["entropy_diff"] += abs(h_p - h_q)
    return {k: v / len(anchor) for k, v in totals.items()}


def _logits(positions: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor logits and a perturbed candidate, peaked like a trained model's (not uniform)."""
    generator = torch.Generator().manual_seed(seed)
    anchor = torch.randn(positions, vocab, generator=generator) * 3.0
    candidate = anchor + torch.randn(positions, vocab, generator=generator) * 0.7
    return anchor, candidate


def run(device: str, positions: int, repeats: int) -> dict:
    records = []
    for vocab in VOCABS:
        anchor, candidate = _logits(positions, vocab, seed=vocab)
        a_np, c_np = anchor.double().numpy(), candidate.double().numpy()
        ref = reference_metrics(a_np, c_np)
        dev_a, dev_c = anchor.to(device), candidate.to(device)
        ours = {k: float(v.mean()) for k, v in nib_position_metrics(dev_a, dev_c).items() if k in CORE_METRICS}
        max_diff = max(abs(ours[k] - ref[k]) for k in CORE_METRICS)
        if max_diff > 1e-6:
            raise AssertionError(f"vocab {vocab}: vectorised and per-position NIB differ by {max_diff:.2e} > 1e-6")
        reference_time = timed(lambda a=a_np, c=c_np: reference_metrics(a, c), repeats, "cpu", warmup=0)
        vectorised_time = timed(lambda a=dev_a, c=dev_c: nib_position_metrics(a, c), repeats * 3, device)
        speedup = ratio(reference_time, vectorised_time)
        records.append({"vocab": vocab, "positions": positions, "max_abs_difference": max_diff,
                        "reference": reference_time, "vectorised": vectorised_time, "speedup": speedup})
        print(f"NIB at vocabulary {vocab}: {speedup['median']:.0f}x faster, max |difference| {max_diff:.1e}")
    at_262k = records[-1]["speedup"]["median"]
    return {"records": records, "target_speedup_262k": TARGET_SPEEDUP_262K,
            "meets_target": at_262k >= TARGET_SPEEDUP_262K,
            "note": "the reference always runs on the CPU (numpy); the vectorised metric on --device"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--positions", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    record = run(args.device, args.positions, args.repeats)
    write_section(args.device, "nib_evaluator", record)
    return record


if __name__ == "__main__":
    main()
