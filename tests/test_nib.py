"""NIB metric, protocol presets and verdict, checked on hand-made distributions and against a
plain float64 implementation (float32 logits are worked in float32 and summed in float64: each
metric within about 1e-7 of float64; float64 logits are worked in float64: within 1e-12)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy

from abi import nib
from abi.nib import (
    NIB_THRESHOLDS,
    PROTOCOLS,
    get_protocol,
    nib_position_metrics,
    official_nib,
    per_window_metrics,
    summarize_positions,
    summary_from_per_window,
    tail_summary,
)

NEG = float("-inf")
# Agreement with exact values: float32 logits carry float32 rounding into the elementwise work.
TOL = {torch.float32: 1e-7, torch.float64: 1e-12}
F32_TOL = 2e-7  # per position and per mean, vs the float64 reference (the contract is 1e-6; we see 3e-8)
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])


def _one(a: list[float], c: list[float], dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Metrics of a single position, as plain floats."""
    out = nib_position_metrics(torch.tensor([a], dtype=dtype), torch.tensor([c], dtype=dtype))
    return {k: float(v[0]) for k, v in out.items()}


def _top_by_index(x: np.ndarray, k: int) -> tuple[int, set[int]]:
    """Top-1 and top-k tokens with ties going to the lower index (a stable sort of -x)."""
    order = np.argsort(-x, kind="stable")
    return int(order[0]), set(order[:k].tolist())


def _float64_reference(a: torch.Tensor, c: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every metric the plain way, in float64 from log-softmax, 0 log 0 = 0, per position."""
    lp, lq = torch.log_softmax(a.double(), -1), torch.log_softmax(c.double(), -1)
    p, q = lp.exp(), lq.exp()
    m = 0.5 * (p + q)
    entr = torch.special.entr
    h_p, h_q, h_m = entr(p).sum(-1), entr(q).sum(-1), entr(m).sum(-1)
    cross = torch.where(p > 0, p * lq, torch.zeros_like(p)).sum(-1)
    k = min(5, a.shape[-1])
    top1, top5 = [], []
    for x, y in zip(a.double().numpy(), c.double().numpy()):
        (x1, xs), (y1, ys) = _top_by_index(x, k), _top_by_index(y, k)
        top1.append(float(x1 == y1))
        top5.append(len(xs & ys) / k)
    return {
        "js": h_m - 0.5 * (h_p + h_q),
        "top1": torch.tensor(top1, dtype=torch.float64),
        "top5": torch.tensor(top5, dtype=torch.float64),
        "entropy_diff": (h_p - h_q).abs(),
        "kl_ac": -h_p - cross,
        "entropy_anchor": h_p,
        "entropy_candidate": h_q,
    }


def _assert_matches_reference(a: torch.Tensor, c: torch.Tensor, tol: float) -> dict[str, torch.Tensor]:
    """Per-position and mean agreement with the float64 reference; returns our metrics."""
    out, ref = nib_position_metrics(a, c), _float64_reference(a, c)
    for key, expected in ref.items():
        got = out[key]
        assert torch.equal(torch.isinf(got), torch.isinf(expected)), key
        finite = torch.isfinite(expected)
        if finite.any():
            assert (got[finite] - expected[finite]).abs().max() <= tol, key
            assert abs(float(got[finite].mean() - expected[finite].mean())) <= tol, key
    return out


@DTYPES
def test_identical_logits_agree_perfectly(dtype: torch.dtype) -> None:
    logits = torch.randn(3, 7, 50, dtype=dtype)
    out = nib_position_metrics(logits, logits.clone())
    assert out["js"].dtype == torch.float64 and out["js"].shape == (3, 7)
    # float32: the mixture's log rounds (~1e-8); float64 leaves ~1e-15
    tol = 1e-7 if dtype == torch.float32 else 1e-14
    assert out["js"].abs().max() < tol and out["kl_ac"].abs().max() < tol
    assert torch.all(out["top1"] == 1) and torch.all(out["top5"] == 1)
    assert torch.all(out["entropy_diff"] == 0)


@DTYPES
@pytest.mark.parametrize("pad", [0, 6])
def test_js_uniform_two_vs_one_hot_by_hand(pad: int, dtype: torch.dtype) -> None:
    m = [0.75, 0.25]
    kl_p_m = 0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    kl_q_m = 1.0 * math.log(1.0 / m[0])
    out = _one([0.0, 0.0] + [NEG] * pad, [0.0, NEG] + [NEG] * pad, dtype)
    assert out["js"] == pytest.approx(0.5 * kl_p_m + 0.5 * kl_q_m, abs=TOL[dtype])
    assert out["entropy_anchor"] == pytest.approx(math.log(2), abs=TOL[dtype])
    assert out["entropy_candidate"] == pytest.approx(0.0, abs=TOL[dtype])
    assert out["entropy_diff"] == pytest.approx(math.log(2), abs=TOL[dtype])
    assert out["kl_ac"] == math.inf  # q puts zero mass where p does not


@DTYPES
def test_kl_is_anchor_to_candidate(dtype: torch.dtype) -> None:
    out = _one([0.0, NEG, NEG], [0.0, 0.0, NEG], dtype)
    assert out["kl_ac"] == pytest.approx(math.log(2), abs=TOL[dtype])


@pytest.mark.parametrize("k", [1, 3, 10, 1000])
def test_entropy_of_uniform_is_log_k(k: int) -> None:
    out = _one([0.0] * k, [0.0] * k)
    assert out["entropy_anchor"] == pytest.approx(math.log(k), abs=1e-12)


def test_top5_sharing_three_tokens_is_point_six() -> None:
    a = torch.zeros(30)
    c = torch.zeros(30)
    a[[0, 1, 2, 3, 4]] = torch.tensor([10.0, 9, 8, 7, 6])
    c[[2, 0, 1, 20, 21]] = torch.tensor([10.0, 9, 8, 7, 6])
    out = nib_position_metrics(a[None], c[None])
    assert float(out["top5"][0]) == pytest.approx(0.6)
    assert float(out["top1"][0]) == 0.0


def test_permuting_non_top5_tokens_keeps_top5() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 200, generator=gen)
    c = torch.randn(4, 200, generator=gen)
    before = nib_position_metrics(a, c)
    for row in range(4):
        rest = torch.topk(c[row], 200).indices[5:]
        c[row, rest] = c[row, rest[torch.randperm(rest.numel(), generator=gen)]]
    after = nib_position_metrics(a, c)
    assert torch.equal(before["top5"], after["top5"])
    assert torch.equal(before["top1"], after["top1"])


@DTYPES
def test_matches_scipy_reference(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(6, 40, generator=gen, dtype=dtype) * 3
    c = torch.randn(6, 40, generator=gen, dtype=dtype) * 3
    out = nib_position_metrics(a, c, chunk_size=4)
    for i in range(6):
        p = torch.softmax(a[i].double(), -1).numpy()
        q = torch.softmax(c[i].double(), -1).numpy()
        assert float(out["js"][i]) == pytest.approx(jensenshannon(p, q) ** 2, abs=TOL[dtype])
        assert float(out["kl_ac"][i]) == pytest.approx(entropy(p, q), abs=TOL[dtype])
        assert float(out["entropy_diff"][i]) == pytest.approx(abs(entropy(p) - entropy(q)), abs=TOL[dtype])


def test_wide_vocab_is_chunked_and_matches_float64_reference(monkeypatch) -> None:
    vocab = 262_144
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(1, 64, vocab, generator=gen) * 2
    c = a + torch.randn(1, 64, vocab, generator=gen)
    rows_seen: list[int] = []
    original = nib._chunk_metrics

    def spy(x: torch.Tensor, y: torch.Tensor, *rest: object) -> torch.Tensor:
        rows_seen.append(x.shape[0])
        return original(x, y, *rest)

    monkeypatch.setattr(nib, "_chunk_metrics", spy)
    out = nib_position_metrics(a, c)
    assert sum(rows_seen) == 64 and len(rows_seen) > 1
    assert max(rows_seen) * vocab * 4 <= 2**20  # one float32 temporary <= 1 MiB
    for t in (0, 31, 63):
        p = torch.softmax(a[0, t].double(), -1).numpy()
        q = torch.softmax(c[0, t].double(), -1).numpy()
        assert float(out["js"][0, t]) == pytest.approx(jensenshannon(p, q) ** 2, abs=1e-7)
        assert float(out["kl_ac"][0, t]) == pytest.approx(entropy(p, q), abs=1e-7)
        assert float(out["entropy_anchor"][0, t]) == pytest.approx(entropy(p), abs=1e-7)
        shared = len(set(np.argsort(-p)[:5]) & set(np.argsort(-q)[:5]))
        assert float(out["top5"][0, t]) == shared / 5


def test_chunk_size_does_not_change_results() -> None:
    a, c = torch.randn(3, 11, 64), torch.randn(3, 11, 64)
    ref = nib_position_metrics(a, c, chunk_size=4096)
    for size in (1, 5):
        out = nib_position_metrics(a, c, chunk_size=size)
        for key in ref:
            assert torch.equal(out[key], ref[key])


def _benchmark_like(rows: int, vocab: int, seed: int, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor logits and a perturbed candidate, as the benchmark draws them."""
    gen = torch.Generator().manual_seed(seed)
    anchor = torch.randn(rows, vocab, generator=gen) * scale
    return anchor, anchor + torch.randn(rows, vocab, generator=gen) * 0.7


@DTYPES
@pytest.mark.parametrize("vocab", [7, 300, 2000, 4096, 49_152])
def test_matches_float64_reference_across_vocabularies(vocab: int, dtype: torch.dtype) -> None:
    # 7 and 300: top-k scans the row; 2000 (with a ragged tail) and up: the block search
    for scale in (3.0, 8.0):  # the benchmark's logits, and sharply peaked ones
        a, c = _benchmark_like(16, vocab, seed=vocab, scale=scale)
        _assert_matches_reference(a.to(dtype), c.to(dtype), tol=F32_TOL if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [300, 2000, 4096])
def test_ties_go_to_the_lower_token_index(vocab: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    a = torch.round(torch.randn(64, vocab, generator=gen) * 2)  # many exact ties among the top
    a[:8] = 0.0  # rows of one value: top-1 is token 0, top-5 tokens 0-4
    a = a.to(dtype)
    top = nib._top_indices(a, 5)
    for row, x in enumerate(a.double().numpy()):
        first, five = _top_by_index(x, 5)
        assert int(top[row, 0]) == first and set(top[row].tolist()) == five
    _assert_matches_reference(a, torch.roll(a, 1, dims=0), tol=F32_TOL)


def test_tie_with_a_token_outside_the_searched_blocks() -> None:
    x = torch.full((1, 2048), -10.0)  # 8 blocks of 256
    x[0, [5, 300, 600, 900]] = torch.tensor([9.0, 8.0, 7.0, 6.0])
    x[0, [1900, 1500]] = 5.0  # fifth place: blocks 7 and 5 tie on their maxima
    x[0, 1300] = 5.0 - 1e-6
    top = nib._top_indices(x, 5)
    assert int(top[0, 0]) == 5 and set(top[0].tolist()) == {5, 300, 600, 900, 1500}
    x[0, 1700] = 9.0  # a tie for first place across blocks
    top = nib._top_indices(x, 5)
    assert int(top[0, 0]) == 5 and set(top[0].tolist()) == {5, 300, 600, 900, 1700}


@DTYPES
def test_tokens_without_mass_match_float64_reference(dtype: torch.dtype) -> None:
    a, c = _benchmark_like(24, 2000, seed=4)
    gen = torch.Generator().manual_seed(5)
    a[torch.rand(a.shape, generator=gen) < 0.3] = NEG
    c[torch.rand(c.shape, generator=gen) < 0.3] = NEG
    a[0, 4:], c[1, 2:] = NEG, NEG  # fewer than five tokens with mass: the rest tie at -inf
    a[0, :4], c[1, :2] = torch.tensor([1.0, 3.0, 2.0, 0.0]), torch.tensor([0.5, 1.0])
    out = _assert_matches_reference(a.to(dtype), c.to(dtype), tol=F32_TOL if dtype == torch.float32 else 1e-12)
    assert torch.isinf(out["kl_ac"]).any() and torch.isfinite(out["js"]).all()


def test_scattered_mask_rows_equal_the_full_computation() -> None:
    a, c = _benchmark_like(40, 3000, seed=6)
    mask = torch.rand(40, generator=torch.Generator().manual_seed(7)) < 0.5
    full, masked = nib_position_metrics(a, c), nib_position_metrics(a, c, mask, chunk_size=3)
    for key in full:
        assert torch.equal(masked[key][mask], full[key][mask]) and torch.isnan(masked[key][~mask]).all()


def test_empty_logits_give_empty_metrics() -> None:
    for shape in [(0, 10), (2, 0, 3000)]:
        out = nib_position_metrics(torch.zeros(shape), torch.zeros(shape))
        assert set(out) == set(nib._METRIC_KEYS) and out["js"].shape == shape[:-1]


def test_runs_on_one_thread_and_restores_the_setting() -> None:
    a, c = _benchmark_like(6, 5000, seed=8)
    before = torch.get_num_threads()
    out = nib_position_metrics(a, c)
    assert torch.get_num_threads() == before
    torch.set_num_threads(1)
    try:
        single = nib_position_metrics(a, c)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(out[k], single[k]) for k in out)


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 5, 10\).*\(2, 5, 12\).*same .*vocabulary"):
        nib_position_metrics(torch.zeros(2, 5, 10), torch.zeros(2, 5, 12))
    with pytest.raises(ValueError, match="mask shape"):
        nib_position_metrics(torch.zeros(2, 5, 10), torch.zeros(2, 5, 10), torch.ones(5, 2))


def test_mask_skips_positions_and_summary_uses_only_scored() -> None:
    a, c = torch.randn(2, 6, 20), torch.randn(2, 6, 20)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, 2:] = True
    out = nib_position_metrics(a, c, mask)
    assert torch.isnan(out["js"][:, :2]).all() and not torch.isnan(out["js"][:, 2:]).any()
    full = nib_position_metrics(a, c)
    summary = summarize_positions(out, mask)
    assert summary["js"] == pytest.approx(float(full["js"][:, 2:].mean()), abs=1e-15)
    assert set(summary) == set(full)
    with pytest.raises(ValueError, match="NaN among scored"):
        summarize_positions(out, None)
    with pytest.raises(ValueError, match="selects no positions"):
        summarize_positions(full, torch.zeros(2, 6, dtype=torch.bool))


def test_per_window_means_recompute_the_summary() -> None:
    a, c = torch.randn(4, 9, 30), torch.randn(4, 9, 30)
    mask = torch.arange(9).expand(4, 9) >= 3
    metrics = nib_position_metrics(a, c, mask)
    per_window = per_window_metrics(metrics, mask)
    assert per_window["n_positions"].tolist() == [6, 6, 6, 6]
    assert per_window["js"].shape == (4,)
    assert per_window["top5"][1] == pytest.approx(float(metrics["top5"][1, 3:].mean()))
    recomputed = summary_from_per_window(per_window)
    for key, value in summarize_positions(metrics, mask).items():
        assert recomputed[key] == pytest.approx(value, abs=1e-12)


def test_tail_summary() -> None:
    tails = tail_summary(torch.arange(101, dtype=torch.float64))
    assert tails == {"mean": 50.0, "median": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert tail_summary(np.array([1.0, np.nan, 3.0]), mask=[True, False, True])["max"] == 3.0
    with pytest.raises(ValueError, match="NaN-free"):
        tail_summary(np.array([1.0, np.nan]))


def test_protocol_presets() -> None:
    faq, t5 = get_protocol("faq"), get_protocol("t5-prefix")
    assert (faq.seed, faq.n_windows, faq.layout, faq.window_len, faq.skip) == (
        7777,
        5,
        "causal",
        512,
        20,
    )
    assert (t5.seed, t5.n_windows, t5.layout, t5.prefix_len, t5.cont_len, t5.skip) == (
        7777,
        5,
        "prefix",
        64,
        64,
        5,
    )
    assert (faq.span, faq.scored_len, t5.span, t5.scored_len) == (512, 512, 128, 64)
    assert set(PROTOCOLS) == {"faq", "t5-prefix"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        faq.seed = 1  # type: ignore[misc]
    json.dumps(t5.to_dict())


def test_unknown_protocol_lists_names() -> None:
    with pytest.raises(ValueError, match=r"'nope'.*faq.*t5-prefix"):
        get_protocol("nope")


def test_scored_mask() -> None:
    mask = get_protocol("faq").scored_mask()
    assert mask.dtype == torch.bool and mask.shape == (512,)
    assert not mask[:20].any() and mask[20:].all()  # the last position is scored too
    assert get_protocol("t5-prefix").scored_mask().sum() == 59
    with pytest.raises(ValueError, match="skip"):
        get_protocol("faq").scored_mask(20)


def test_draw_starts_reproducible() -> None:
    faq = get_protocol("faq")
    starts = faq.draw_starts(100_000)
    expected = np.random.default_rng(7777).integers(0, 100_000 - 512 + 1, size=5)
    assert np.array_equal(starts, expected) and np.array_equal(starts, faq.draw_starts(100_000))
    t5 = get_protocol("t5-prefix").draw_starts(1000)
    assert np.array_equal(t5, np.random.default_rng(7777).integers(0, 1000 - 128 + 1, size=5))
    assert faq.draw_starts(512).tolist() == [0] * 5
    with pytest.raises(ValueError, match=r"511 tokens.*needs 512"):
        faq.draw_starts(511)


def test_with_overrides_validates() -> None:
    faq = get_protocol("faq")
    many = faq.with_overrides(n_windows=300)
    assert many.n_windows == 300 and faq.n_windows == 5
    for bad in ({"skip": 512}, {"n_windows": 0}, {"window_len": -1}, {"prefix_len": 8}):
        with pytest.raises(ValueError):
            faq.with_overrides(**bad)
    with pytest.raises(ValueError, match="layout"):
        faq.with_overrides(layout="sideways")


@pytest.mark.parametrize(
    ("summary", "failing"),
    [
        ({"js": 0.0999, "top1": 0.68, "top5": 0.86, "entropy_diff": 0.3499}, set()),
        ({"js": 0.10, "top1": 0.68, "top5": 0.86, "entropy_diff": 0.0}, {"js"}),
        ({"js": 0.0, "top1": 0.6799, "top5": 0.86, "entropy_diff": 0.0}, {"top1"}),
        ({"js": 0.0, "top1": 0.9, "top5": 0.8599, "entropy_diff": 0.0}, {"top5"}),
        ({"js": 0.0, "top1": 0.9, "top5": 0.9, "entropy_diff": 0.35}, {"entropy_diff"}),
    ],
)
def test_verdict_at_thresholds(summary: dict[str, float], failing: set[str]) -> None:
    passes = NIB_THRESHOLDS.passes(summary)
    assert {k for k, ok in passes.items() if not ok} == failing
    assert NIB_THRESHOLDS.verdict(summary) == ("PASS" if not failing else "FAIL")


def test_official_nib_identical_passes_and_is_json() -> None:
    protocol = get_protocol("t5-prefix")
    logits = torch.randn(5, 64, 40)
    result = official_nib(logits, logits.clone(), protocol)
    assert result["verdict"] == "PASS" and all(result["pass"].values())
    assert result["summary"] == pytest.approx({"js": 0.0, "top1": 1.0, "top5": 1.0, "entropy_diff": 0.0}, abs=1e-7)
    assert result["n_positions"] == 5 * 59
    assert sum(result["per_window"]["n_positions"]) == result["n_positions"]
    json.dumps(result)


def test_official_nib_random_fails_and_checks_layout() -> None:
    protocol = get_protocol("faq").with_overrides(window_len=32, skip=4)
    result = official_nib(torch.randn(5, 32, 100) * 4, torch.randn(5, 32, 100) * 4, protocol)
    assert result["verdict"] == "FAIL" and not result["pass"]["top5"]
    assert result["n_positions"] == 5 * 28
    with pytest.raises(ValueError, match=r"\(5, 32\)"):
        official_nib(torch.randn(5, 31, 10), torch.randn(5, 31, 10), protocol)
