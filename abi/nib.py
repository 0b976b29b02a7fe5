"""The Non-Inferiority Benchmark (NIB): per-position agreement of two next-token distributions.

NIB compares distributions, not predictions: at every scored position the anchor's softmax p
and the candidate's softmax q are compared by Jensen-Shannon divergence (nats), top-1 and
top-5 agreement and entropy difference; PASS needs all four thresholds at once. Everything
is computed in float64 from log-softmax, in chunks of positions so a 262,144-wide vocabulary
fits in memory. Ties in top-k are broken by ``torch.topk`` in an unspecified order, so with
exactly tied logits the agreement metrics can depend on that order.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

CORE_METRICS = ("js", "top1", "top5", "entropy_diff")
_METRIC_KEYS = (*CORE_METRICS, "kl_ac", "entropy_anchor", "entropy_candidate")
# A float64 [positions, V] tensor of this many elements is 64 MiB; about eight live at once.
_CHUNK_ELEMENTS = 2**20  # 8 MiB float64 temporaries: below glibc's mmap threshold, reused
_TOPK = 5


@dataclass(frozen=True)
class NIBThresholds:
    """The published pass thresholds; kept in one place so verifiers and notebooks agree."""

    top5_min: float = 0.86
    top1_min: float = 0.68
    js_max: float = 0.10
    entropy_diff_max: float = 0.35

    def passes(self, summary: dict[str, float]) -> dict[str, bool]:
        """Criterion -> pass, from mean metrics keyed like ``CORE_METRICS``."""
        missing = [k for k in CORE_METRICS if k not in summary]
        if missing:
            raise ValueError(f"summary lacks {missing}; pass the output of summarize_positions")
        return {
            "js": bool(summary["js"] < self.js_max),
            "top1": bool(summary["top1"] >= self.top1_min),
            "top5": bool(summary["top5"] >= self.top5_min),
            "entropy_diff": bool(summary["entropy_diff"] < self.entropy_diff_max),
        }

    def verdict(self, summary: dict[str, float]) -> str:
        """PASS only when all four criteria pass at once, as the original defines it."""
        return "PASS" if all(self.passes(summary).values()) else "FAIL"


NIB_THRESHOLDS = NIBThresholds()


def _check_pair(anchor: Tensor, candidate: Tensor, mask: Tensor | None) -> None:
    """Fail early with both shapes: a silent broadcast would compare unrelated tokens."""
    if anchor.shape != candidate.shape or anchor.ndim < 1:
        raise ValueError(
            f"anchor logits {tuple(anchor.shape)} and candidate logits {tuple(candidate.shape)} "
            "must have the same shape [..., V]; different vocabularies usually mean models with "
            "different tokenizers: compare both in the same (target) vocabulary"
        )
    if mask is not None and tuple(mask.shape) != tuple(anchor.shape[:-1]):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must equal the logits' leading shape "
            f"{tuple(anchor.shape[:-1])}; build it with NIBProtocol.scored_mask"
        )


def _rowdot(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise dot products through batched BLAS: no [P, V] temporary, unlike ``(x * y).sum(-1)``
    (which is what ``linalg.vecdot`` does on the CPU, at three times the cost)."""
    return torch.bmm(x.unsqueeze(-2), y.unsqueeze(-1)).reshape(x.shape[:-1])


def _entropies_fast(p: Tensor, q: Tensor, lp: Tensor, lq: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """H(p), H(q), H(m), sum p log q as plain dot products: NaN if any probability is exactly 0."""
    m = torch.add(p, q).mul_(0.5)
    h_m = -_rowdot(m, m.log())
    return -_rowdot(p, lp), -_rowdot(q, lq), h_m, _rowdot(p, lq)


def _entropies_safe(p: Tensor, q: Tensor, lp: Tensor, lq: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The same with 0 log 0 = 0 (``special.entr``), for logits holding -inf; about 3x slower."""
    entr = torch.special.entr
    cross = torch.where(p > 0, p * lq, torch.zeros_like(p))
    return entr(p).sum(-1), entr(q).sum(-1), entr(0.5 * (p + q)).sum(-1), cross.sum(-1)


def _chunk_metrics(a: Tensor, c: Tensor) -> dict[str, Tensor]:
    """All metrics for a [P, V] chunk, in float64 from log-softmax for stable sums.

    JS is written as H(m) - (H(p) + H(q)) / 2 and KL(p||q) as -H(p) - sum p log q: four
    vocabulary-wide dot products, which is where the evaluator's time goes. Top-k runs on the raw
    logits, whose order equals that of the probabilities.
    """
    k = min(_TOPK, a.shape[-1])
    top_p = torch.topk(a, k, dim=-1).indices
    top_q = torch.topk(c, k, dim=-1).indices
    lp = torch.log_softmax(a.to(torch.float64), dim=-1)
    lq = torch.log_softmax(c.to(torch.float64), dim=-1)
    p, q = lp.exp(), lq.exp()
    h_p, h_q, h_m, cross = _entropies_fast(p, q, lp, lq)
    if not (torch.isfinite(h_p).all() and torch.isfinite(h_q).all() and torch.isfinite(h_m).all()):
        h_p, h_q, h_m, cross = _entropies_safe(p, q, lp, lq)
    # topk indices are distinct within a row, so counting equal pairs counts the intersection.
    shared = (top_p.unsqueeze(-1) == top_q.unsqueeze(-2)).sum(dim=(-2, -1))
    return {
        "js": (h_m - 0.5 * (h_p + h_q)).clamp_min(0.0),
        "top1": (top_p[:, 0] == top_q[:, 0]).to(torch.float64),
        "top5": shared.to(torch.float64) / k,
        "entropy_diff": (h_p - h_q).abs(),
        "kl_ac": (-h_p - cross).clamp_min(0.0),
        "entropy_anchor": h_p,
        "entropy_candidate": h_q,
    }


def nib_position_metrics(
    anchor_logits: Tensor,
    candidate_logits: Tensor,
    mask: Tensor | None = None,
    chunk_size: int = 4096,
) -> dict[str, Tensor]:
    """Per-position NIB metrics (float64, shaped like the leading dims of the logits).

    Positions where ``mask`` is False are not computed and hold NaN, so an unscored value can
    never leak into a mean unnoticed. ``chunk_size`` caps positions per chunk; it is further
    capped so one float64 chunk stays near 64 MiB whatever the vocabulary width.
    """
    _check_pair(anchor_logits, candidate_logits, mask)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size}")
    lead, vocab = tuple(anchor_logits.shape[:-1]), anchor_logits.shape[-1]
    a = anchor_logits.detach().reshape(-1, vocab)
    c = candidate_logits.detach().reshape(-1, vocab)
    # Computed on the logits' device; results and indices live on the CPU.
    rows = torch.arange(a.shape[0]) if mask is None else mask.reshape(-1).nonzero()[:, 0].cpu()
    step = max(1, min(chunk_size, _CHUNK_ELEMENTS // max(vocab, 1)))
    out = {k: torch.full((a.shape[0],), math.nan, dtype=torch.float64) for k in _METRIC_KEYS}
    with torch.no_grad():
        for start in range(0, rows.numel(), step):
            idx = rows[start : start + step]
            dev_idx = idx.to(a.device)
            for key, value in _chunk_metrics(a[dev_idx], c[dev_idx]).items():
                out[key][idx] = value.cpu()
    return {k: v.reshape(lead) for k, v in out.items()}


def _scored(values: Tensor, mask: Tensor | None) -> Tensor:
    """The scored entries of one metric, refusing NaN (an unscored position asked for)."""
    picked = values.reshape(-1) if mask is None else values[mask.to(torch.bool)]
    if picked.numel() == 0:
        raise ValueError("the mask selects no positions; check skip against the window length")
    if torch.isnan(picked).any():
        raise ValueError("NaN among scored positions: use the same mask as nib_position_metrics")
    return picked


def summarize_positions(metrics: dict[str, Tensor], mask: Tensor | None) -> dict[str, float]:
    """Mean of every metric over the scored positions (mask True = scored), as NIB averages."""
    return {k: float(_scored(v, mask).mean()) for k, v in metrics.items()}


def per_window_metrics(metrics: dict[str, Tensor], mask: Tensor | None) -> dict[str, np.ndarray]:
    """Per-window means (window = first dim) and ``n_positions``: the raw data a result file
    keeps so every summary can be recomputed and bootstrapped with the window as the unit."""
    first = next(iter(metrics.values()))
    m = torch.ones_like(first, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    m = m.reshape(m.shape[0], -1)
    counts = m.sum(-1)
    if (counts == 0).any():
        raise ValueError("a window has no scored positions; lower skip or lengthen the window")
    out: dict[str, np.ndarray] = {}
    for key, values in metrics.items():
        v = values.reshape(m.shape)
        _scored(v, m)
        out[key] = (torch.where(m, v, 0.0).sum(-1) / counts).numpy()
    out["n_positions"] = counts.numpy().astype(np.int64)
    return out


def summary_from_per_window(per_window: dict[str, Any]) -> dict[str, float]:
    """Position-weighted mean of per-window means = the pooled position mean; lets a verifier
    recompute the official summary from a result file without any model."""
    n = np.asarray(per_window["n_positions"], dtype=np.float64)
    return {
        k: float(np.sum(np.asarray(v, dtype=np.float64) * n) / n.sum())
        for k, v in per_window.items()
        if k != "n_positions"
    }


def tail_summary(values: Tensor | np.ndarray, mask: Tensor | np.ndarray | None = None) -> dict:
    """Mean, median, p90, p99, max: means hide the rare positions where the models disagree."""
    arr = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, np.float64)
    if mask is not None:
        arr = arr[np.asarray(mask, dtype=bool)]
    arr = arr.reshape(-1)
    if arr.size == 0 or np.isnan(arr).any():
        raise ValueError("tail_summary needs non-empty, NaN-free values; pass the scored mask")
    p50, p90, p99 = np.quantile(arr, [0.5, 0.9, 0.99])
    return {
        "mean": float(arr.mean()),
        "median": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(arr.max()),
    }


@dataclass(frozen=True)
class NIBProtocol:
    """How evaluation windows are drawn and which positions count.

    ``causal``: a window is ``window_len`` consecutive tokens fed to a decoder-only model.
    ``prefix``: ``prefix_len`` encoder tokens then ``cont_len`` decoder tokens (T5); the
    fields that do not apply to the layout must be 0 so result files carry no stray numbers.
    """

    name: str
    seed: int
    n_windows: int
    layout: Literal["causal", "prefix"]
    window_len: int
    skip: int
    prefix_len: int = 0
    cont_len: int = 0

    def __post_init__(self) -> None:
        """Validate once so every preset and override is usable."""
        if self.layout not in ("causal", "prefix"):
            raise ValueError(f"layout must be 'causal' or 'prefix', got {self.layout!r}")
        used = ("window_len",) if self.layout == "causal" else ("prefix_len", "cont_len")
        for name in ("seed", "n_windows", *used):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "seed" else 1):
                raise ValueError(f"{name} must be a positive int for layout {self.layout!r}")
        unused = {"window_len", "prefix_len", "cont_len"} - set(used)
        stray = sorted(n for n in unused if getattr(self, n) != 0)
        if stray:
            raise ValueError(f"{stray} do not apply to layout {self.layout!r}; set them to 0")
        if not isinstance(self.skip, int) or not 0 <= self.skip < self.scored_len:
            raise ValueError(
                f"skip={self.skip} must be an int in [0, {self.scored_len}) (the scored length)"
            )

    @property
    def span(self) -> int:
        """Tokens one window takes from the evaluation stream."""
        return self.window_len if self.layout == "causal" else self.prefix_len + self.cont_len

    @property
    def scored_len(self) -> int:
        """Positions with logits per window: the chunk, or the decoder continuation."""
        return self.window_len if self.layout == "causal" else self.cont_len

    def scored_mask(self, seq_len: int | None = None) -> Tensor:
        """Bool [seq_len]: False for the first ``skip`` positions. The last causal position has
        no next token inside the window, but it is still a distribution to compare: scored."""
        seq_len = self.scored_len if seq_len is None else seq_len
        if seq_len <= self.skip:
            raise ValueError(f"seq_len={seq_len} leaves nothing after skip={self.skip}")
        return torch.arange(seq_len) >= self.skip

    def draw_starts(self, n_tokens: int) -> np.ndarray:
        """Window start offsets, reproducible from ``seed`` (numpy default_rng, as published)."""
        if n_tokens < self.span:
            raise ValueError(
                f"the stream has {n_tokens} tokens but one {self.name!r} window needs "
                f"{self.span}; use a longer evaluation split or a shorter window"
            )
        rng = np.random.default_rng(self.seed)
        return rng.integers(0, n_tokens - self.span + 1, size=self.n_windows)

    def with_overrides(self, **changes: Any) -> NIBProtocol:
        """A validated copy, e.g. hundreds of windows for the statistics beyond the original."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for result files."""
        return dataclasses.asdict(self)


PROTOCOLS: dict[str, NIBProtocol] = {
    "faq": NIBProtocol("faq", seed=7777, n_windows=5, layout="causal", window_len=512, skip=20),
    "t5-prefix": NIBProtocol(
        "t5-prefix",
        seed=7777,
        n_windows=5,
        layout="prefix",
        window_len=0,
        skip=5,
        prefix_len=64,
        cont_len=64,
    ),
}


def get_protocol(name: str) -> NIBProtocol:
    """Look up a preset by name, listing the known ones when it is not there."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown NIB protocol {name!r}; known: {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def _check_windows(logits: Tensor, protocol: NIBProtocol) -> None:
    """The official verdict is only official for the protocol's own window layout."""
    want = (protocol.n_windows, protocol.scored_len)
    if logits.ndim != 3 or tuple(logits.shape[:2]) != want:
        raise ValueError(
            f"official_nib needs logits [n_windows, T, V] with (n_windows, T) = {want} for "
            f"protocol {protocol.name!r}, got {tuple(logits.shape)}; "
            "use protocol.with_overrides(...) for another layout"
        )


def official_nib(
    anchor_logits: Tensor,
    candidate_logits: Tensor,
    protocol: NIBProtocol,
    thresholds: NIBThresholds = NIB_THRESHOLDS,
) -> dict[str, Any]:
    """The single-run verdict as the original reports it, plus per-window raw values."""
    _check_windows(anchor_logits, protocol)
    mask = protocol.scored_mask().expand(anchor_logits.shape[:2])
    metrics = nib_position_metrics(anchor_logits, candidate_logits, mask)
    means = summarize_positions(metrics, mask)
    summary = {k: means[k] for k in CORE_METRICS}
    passes = thresholds.passes(summary)
    per_window = per_window_metrics(metrics, mask)
    return {
        "summary": summary,
        "pass": passes,
        "verdict": "PASS" if all(passes.values()) else "FAIL",
        "n_positions": int(mask.sum()),
        "diagnostics": {k: v for k, v in means.items() if k not in CORE_METRICS},
        "per_window": {k: v.tolist() for k, v in per_window.items()},
        "protocol": protocol.to_dict(),
        "thresholds": dataclasses.asdict(thresholds),
    }
