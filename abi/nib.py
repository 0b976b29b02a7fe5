"""The Non-Inferiority Benchmark (NIB): per-position agreement of two next-token distributions.

NIB compares distributions, not predictions: at every scored position the anchor's softmax p
and the candidate's softmax q are compared by Jensen-Shannon divergence (nats), top-1 and
top-5 agreement and entropy difference; PASS needs all four thresholds at once. The work over
the vocabulary (a fused softmax, one log2) runs in float32, products and sums in float64: each
metric stays within 1e-6 of an all-float64 computation (about 1e-7 per position) at a fraction
of its cost; float64 logits are worked in float64. Positions go in chunks so a 262,144-wide
vocabulary stays in cache. Top-k is taken on the logits themselves, with exact ties broken
toward the lower token index, so the agreement metrics are deterministic.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

CORE_METRICS = ("js", "top1", "top5", "entropy_diff")
_METRIC_KEYS = (*CORE_METRICS, "kl_ac", "entropy_anchor", "entropy_candidate")
# Positions x vocabulary per chunk: its float32 work arrays of 1 MiB (float64: 2 MiB) stay in cache.
_CHUNK_ELEMENTS = 2**18
_TOPK = 5
_BLOCK = 256  # tokens per block when looking for the top k (see _candidate_top)
_LN2 = math.log(2.0)


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


def _ordered_top(x: Tensor, k: int) -> Tensor:
    """The k top token indices [R, k] by value, ties broken toward the lower token index (like
    ``numpy.argmax``), so results never depend on a sort's internal order. O(V) per row."""
    kth = torch.topk(x, k, dim=-1).values[:, -1:]
    above, tied = x > kth, x == kth
    chosen = above | (tied & (tied.cumsum(-1) <= k - above.sum(-1, keepdim=True)))
    top = chosen.nonzero()[:, 1].reshape(-1, k)  # in index order: a stable sort puts the top-1 first
    return top.gather(1, torch.sort(x.gather(1, top), dim=-1, descending=True, stable=True).indices)


def _candidate_top(x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The k+1 largest logits per row, searched only in the k blocks with the largest maxima
    (plus the ragged tail): the top k lie there, as each of those maxima outranks every token
    outside, so one ``amax`` pass replaces a full top-k scan (10x slower). Also returns the
    largest logit outside the searched blocks, which a tie at the k-th place is checked against."""
    rows, vocab = x.shape
    head = vocab - vocab % _BLOCK
    top_blocks = torch.topk(x[:, :head].reshape(rows, -1, _BLOCK).amax(-1), k + 1, dim=-1)
    offsets = torch.arange(_BLOCK, device=x.device)
    index = (top_blocks.indices[:, :k, None] * _BLOCK + offsets).reshape(rows, -1)
    if head < vocab:
        index = torch.cat([index, torch.arange(head, vocab, device=x.device).expand(rows, -1)], dim=-1)
    best = torch.topk(x.gather(1, index), k + 1, dim=-1)
    return best.values, index.gather(1, best.indices), top_blocks.values[:, k]


def _top_indices(x: Tensor, k: int) -> Tensor:
    """The k top token indices [R, k] of logits [R, V], top-1 first; top-k of the logits is top-k
    of the probabilities (softmax is monotone). Rows with a tie that decides the top-1 or the set
    are redone by ``_ordered_top``; without ties the fast path gives the same answer."""
    vocab = x.shape[-1]
    if vocab <= k or not len(x):  # every token is in the top k, or there is no row
        return _ordered_top(x, k) if len(x) else torch.zeros(0, k, dtype=torch.long, device=x.device)
    if vocab // _BLOCK > k:
        values, index, outside = _candidate_top(x, k)
    else:  # few tokens: scan them all
        (values, index), outside = torch.topk(x, k + 1, dim=-1), torch.tensor(-math.inf, device=x.device)
    tied = (values[:, 0] == values[:, 1]) | (values[:, k - 1] == values[:, k]) | (values[:, k - 1] <= outside)
    top, rows = index[:, :k].clone(), tied.nonzero()[:, 0]
    if rows.numel():
        top[rows] = _ordered_top(x[rows], k)
    return top


def _top_pairs(a: Tensor, c: Tensor) -> Tensor:
    """Top-k tokens [2, N, k] of both logits [N, V], top-1 first, by blocks of rows: one pass for all."""
    k, step = min(_TOPK, a.shape[-1]), max(1, 2**22 // a.shape[-1])
    return torch.stack(
        [torch.cat([_top_indices(x[i : i + step], k) for i in range(0, max(len(x), 1), step)]) for x in (a, c)]
    )


def _scratch(rows: int, a: Tensor, c: Tensor) -> tuple[Tensor, ...]:
    """Work arrays for chunks of up to ``rows`` positions, allocated once per call: megabyte arrays freed after each
    chunk go back to the OS and are page-faulted in anew by the next (3x slower). p [2, R, V]: softmax of anchor and
    candidate in float32 (float64 for float64 logits); p64, x64: p and the logits in float64 (x64's anchor half then
    holds log2 u); u [R, V]: the scaled mixture."""
    dtype = torch.float64 if torch.float64 in (a.dtype, c.dtype) else torch.float32
    pair, f64, device = (2, rows, a.shape[-1]), torch.float64, a.device
    shapes = ((pair, dtype), (pair, f64), (pair, f64), (pair[1:], dtype))
    return tuple(torch.empty(shape, dtype=kind, device=device) for shape, kind in shapes)


def _entropy_terms(a: Tensor, c: Tensor, top: Tensor, work: Sequence[Tensor], safe: bool) -> tuple[Tensor, ...]:
    """[H(p), H(q)] as [R, 2], H(m) and sum p log q in nats, float64, given the top tokens [2, R, k]:
    softmax and log2 in float32 (float64 for float64 logits), products (exact for float32 factors)
    and sums in float64, by batched matrix products that read each row once.

    p comes from torch's fused softmax (several times faster than ``torch.exp`` on the CPU), which
    scales by 1/Z rounded to its dtype: that is p at the top token, so log Z = log z - log p[top]
    is exact for z = sum p in float64; at the other top tokens, which weigh most, p is redone in
    float64. With s = x - max, H(p) = log Z - E_p[s] and sum p log q = E_p[s_c] - log Z_c. H(m)
    is log U - sum u log u / U for u = m * exp(hbar), whose log is near 0 where m has its mass so
    a float32 log2 rounds little (float64 at the top tokens). ``safe`` reads -inf logits (tokens
    without mass) as 0 so 0 * -inf adds 0."""
    p, p64, x64, u = work
    torch.softmax(a.to(p.dtype), dim=-1, out=p[0])
    torch.softmax(c.to(p.dtype), dim=-1, out=p[1])
    p64.copy_(p)
    top_logit, scale = x64.gather(2, top[..., :1]), p64.gather(2, top[..., :1])
    p64.scatter_(2, top, torch.exp(x64.gather(2, top) - top_logit) * scale)
    z = p64.sum(-1)
    shift = (z.log() - scale[..., 0].log() + top_logit[..., 0]).T  # [R, 2]: log Z + max x
    if safe:
        x64.nan_to_num_(neginf=0.0)
    mean_x = torch.bmm(p64.transpose(0, 1), x64.permute(1, 2, 0)) / z.T[..., None]  # [r, s, t]: E_{p_s}[x_t]
    h = shift - torch.diagonal(mean_x, dim1=1, dim2=2)
    cross = mean_x[:, 0, 1] - shift[:, 1]
    if safe:  # p has mass where q has none: sum p log q = -inf
        cross = cross.masked_fill(((p[0] > 0) & torch.isneginf(c)).any(-1), -math.inf)
    w = torch.exp(h.mean(-1, keepdim=True)) * 0.5 / z.T  # [R, 2]: u = w_p p + w_q q
    w32 = w.to(p.dtype)
    log_u = x64[0].copy_(torch.log2(torch.mul(p[1], w32[:, 1:], out=u).addcmul_(p[0], w32[:, :1]), out=u))
    heavy = top.transpose(0, 1).flatten(1)  # both sides' top tokens: log u in float64
    log_u.scatter_(1, heavy, torch.log2(w[:, :1] * p64[0].gather(1, heavy) + w[:, 1:] * p64[1].gather(1, heavy)))
    if safe:
        log_u.nan_to_num_(neginf=0.0)
    total = (w * z.T).sum(-1)
    h_m = total.log() - (w * torch.bmm(log_u[:, None], p64.permute(1, 2, 0))[:, 0]).sum(-1) * _LN2 / total
    return h, h_m, cross


def _chunk_metrics(a: Tensor, c: Tensor, top: Tensor, scratch: Sequence[Tensor] = ()) -> Tensor:
    """All metrics for a [P, V] chunk given its top tokens [2, P, k] (``_top_pairs``): float64
    [len(_METRIC_KEYS), P]. JS is H(m) - (H(p) + H(q)) / 2 and KL(p||q) is -H(p) - sum p log q,
    so each distribution is exponentiated once and only the mixture needs a logarithm. Logits
    holding -inf (tokens with no mass) make 0 * -inf terms; those chunks are redone in safe mode."""
    work = [t[..., : len(a), :] for t in (scratch or _scratch(len(a), a, c))]
    for safe in (False, True):
        work[2][0].copy_(a)
        work[2][1].copy_(c)
        h, h_m, cross = _entropy_terms(a, c, top, work, safe)
        if bool(torch.isfinite(h.sum(-1) + h_m + cross).all()):
            break
    # top-k indices are distinct within a row, so counting equal pairs counts the intersection.
    shared = (top[0].unsqueeze(-1) == top[1].unsqueeze(-2)).sum(dim=(-2, -1)).to(torch.float64) / top.shape[-1]
    same = (top[0, :, 0] == top[1, :, 0]).to(torch.float64)
    js, kl = (h_m - h.mean(-1)).clamp_min(0.0), (-h[:, 0] - cross).clamp_min(0.0)
    return torch.stack([js, same, shared, (h[:, 0] - h[:, 1]).abs(), kl, h[:, 0], h[:, 1]])  # as _METRIC_KEYS


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the chunk loop on one CPU thread: its ops are small, and two OpenMP threads meeting at every op made it
    3-10x slower when the other core was busy (1.4x faster on an idle machine). Restores the caller's setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if device.type == "cpu" else threads)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def nib_position_metrics(
    anchor_logits: Tensor,
    candidate_logits: Tensor,
    mask: Tensor | None = None,
    chunk_size: int = 4096,
) -> dict[str, Tensor]:
    """Per-position NIB metrics (float64, shaped like the leading dims of the logits).

    Positions where ``mask`` is False are not computed and hold NaN, so an unscored value can
    never leak into a mean unnoticed. ``chunk_size`` caps positions per chunk; it is further
    capped so one chunk's float32 work arrays stay near 1 MiB whatever the vocabulary width.
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
    out = torch.full((len(_METRIC_KEYS), a.shape[0]), math.nan, dtype=torch.float64)
    scratch = _scratch(min(step, rows.numel()), a, c)
    with torch.no_grad(), _one_cpu_thread(a.device):
        top = _top_pairs(a, c)
        for start in range(0, rows.numel(), step):
            idx = rows[start : start + step]
            first, last = int(idx[0]), int(idx[-1])
            if last - first + 1 == idx.numel():  # consecutive rows, the usual case: views
                pick, xa, xc = slice(first, last + 1), a[first : last + 1], c[first : last + 1]
            else:
                pick = idx.to(a.device)
                xa, xc = a.index_select(0, pick), c.index_select(0, pick)
            out[:, idx] = _chunk_metrics(xa, xc, top[:, pick], scratch).cpu()
    return {k: v.reshape(lead) for k, v in zip(_METRIC_KEYS, out)}


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
            raise ValueError(f"skip={self.skip} must be an int in [0, {self.scored_len}) (the scored length)")

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
