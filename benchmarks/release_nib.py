"""The release's NIB algorithm, re-implemented from its description as the evaluator's speed baseline.

The release scores one chunk (evaluation window) of positions at a time in numpy: a float32 softmax
over the whole vocabulary, Jensen-Shannon divergence and entropies from probabilities clipped at
1e-12, top-1 by ``argmax`` and top-5 overlap from ``argpartition`` indices intersected as Python sets,
one position at a time. It is written plainly on purpose: it is what the project's evaluator is
timed against, and it agrees with the float64 evaluator only to float32 precision (the clip adds up
to V * 1e-12 of mass, the float32 sums round).
"""

from __future__ import annotations

import numpy as np

from abi.nib import CORE_METRICS

CLIP = 1e-12
TOPK = 5


def softmax32(logits: np.ndarray) -> np.ndarray:
    """Row softmax in float32, max-shifted, over the whole vocabulary."""
    x = np.asarray(logits, dtype=np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """JS(p, q) in nats per row, with both distributions clipped at 1e-12 so no log sees a 0."""
    p, q = np.clip(p, CLIP, 1.0), np.clip(q, CLIP, 1.0)
    m = 0.5 * (p + q)
    return 0.5 * np.sum(p * np.log(p / m), axis=-1) + 0.5 * np.sum(q * np.log(q / m), axis=-1)


def entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats per row, clipped like the divergence."""
    p = np.clip(p, CLIP, 1.0)
    return -np.sum(p * np.log(p), axis=-1)


def top5_overlap(p: np.ndarray, q: np.ndarray) -> list[float]:
    """Shared top-5 tokens per position: ``argpartition`` indices and a Python set intersection."""
    k = min(TOPK, p.shape[-1])
    top_p = np.argpartition(-p, k - 1, axis=-1)[:, :k]
    top_q = np.argpartition(-q, k - 1, axis=-1)[:, :k]
    return [len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(top_p, top_q)]


def chunk_metrics(anchor: np.ndarray, candidate: np.ndarray) -> dict[str, np.ndarray]:
    """The four NIB metrics of one chunk [T, V], per position."""
    p, q = softmax32(anchor), softmax32(candidate)
    return {
        "js": js_divergence(p, q),
        "top1": (p.argmax(axis=-1) == q.argmax(axis=-1)).astype(np.float32),
        "top5": np.asarray(top5_overlap(p, q)),
        "entropy_diff": np.abs(entropy(p) - entropy(q)),
    }


def release_positions(anchor: np.ndarray, candidate: np.ndarray) -> dict[str, np.ndarray]:
    """Per-position metrics of logits [windows, T, V] (or one chunk [T, V]), a window per chunk,
    flattened to [windows * T] in float64."""
    a = np.asarray(anchor).reshape(-1, *np.shape(anchor)[-2:])
    c = np.asarray(candidate).reshape(a.shape)
    chunks = [chunk_metrics(window_a, window_c) for window_a, window_c in zip(a, c)]
    return {k: np.concatenate([chunk[k] for chunk in chunks]).astype(np.float64) for k in CORE_METRICS}


def release_nib(anchor: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Mean metrics over all positions, as the release reports them."""
    return {k: float(v.mean()) for k, v in release_positions(anchor, candidate).items()}
