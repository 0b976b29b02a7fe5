"""Window-clustered statistics on synthetic data with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from abi import stats
from abi.stats import (
    CI,
    design_effect,
    naive_token_ci,
    non_inferiority,
    paired_difference_ci,
    seed_interval,
    window_bootstrap_ci,
)


def _clustered(n_windows: int, size: int, window_sd: float, seed: int) -> np.ndarray:
    """[n_windows, size] values: a shared per-window offset plus unit position noise."""
    rng = np.random.default_rng(seed)
    offsets = rng.normal(0.0, window_sd, size=(n_windows, 1))
    return offsets + rng.normal(0.0, 1.0, size=(n_windows, size))


def test_bootstrap_ci_contains_estimate_and_is_weighted() -> None:
    rng = np.random.default_rng(0)
    means, counts = rng.gamma(2.0, 0.01, size=200), rng.integers(300, 500, size=200)
    ci = window_bootstrap_ci(means, counts)
    assert ci.estimate == pytest.approx(np.sum(means * counts) / counts.sum())
    assert ci.low < ci.estimate < ci.high and not ci.degenerate
    assert ci.method == "window bootstrap BCa" and ci.confidence == 0.95
    assert all(type(v) is float for v in (ci.estimate, ci.low, ci.high))
    json.dumps(ci.to_dict())


def test_bootstrap_deterministic_for_a_seed() -> None:
    means = np.random.default_rng(1).normal(size=50)
    assert window_bootstrap_ci(means, None, seed=3) == window_bootstrap_ci(means, None, seed=3)
    assert window_bootstrap_ci(means, None, seed=3) != window_bootstrap_ci(means, None, seed=4)


@pytest.mark.parametrize(("means", "counts"), [([0.4], [10]), ([0.2, 0.2, 0.2], [3, 4, 5])])
def test_bootstrap_degenerate(means: list[float], counts: list[int]) -> None:
    ci = window_bootstrap_ci(means, counts)
    assert ci.degenerate and ci.low == ci.high == ci.estimate == pytest.approx(means[0])


def test_bootstrap_falls_back_to_percentile(monkeypatch) -> None:
    real = stats.stats.bootstrap

    def broken_bca(*args, **kwargs):
        res = real(*args, **kwargs)
        if kwargs["method"] == "BCa":
            res.confidence_interval = type(res.confidence_interval)(math.nan, math.nan)
        return res

    monkeypatch.setattr(stats.stats, "bootstrap", broken_bca)
    ci = window_bootstrap_ci(np.arange(10.0), None)
    assert ci.method == "window bootstrap percentile (BCa failed)"
    assert ci.low < ci.estimate < ci.high


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="n_positions"):
        window_bootstrap_ci([0.1, 0.2], [5])
    with pytest.raises(ValueError, match="confidence"):
        window_bootstrap_ci([0.1, 0.2], None, confidence=95)
    with pytest.raises(ValueError, match="pair the same windows"):
        paired_difference_ci([0.1, 0.2], [0.1], None)


def test_design_effect_independent_is_about_one() -> None:
    values = _clustered(200, 50, window_sd=0.0, seed=2)
    ids = np.repeat(np.arange(200), 50)
    assert design_effect(values.ravel(), ids) == pytest.approx(1.0, abs=0.3)


def test_design_effect_clustered_matches_kish() -> None:
    values = _clustered(200, 50, window_sd=1.0, seed=3)
    ids = np.repeat(np.arange(200), 50)
    deff = design_effect(values.ravel(), ids)
    icc = 1.0 / (1.0 + 1.0)  # window variance / total variance
    assert deff > 10 and deff == pytest.approx(1 + (50 - 1) * icc, rel=0.3)


def test_naive_token_ci_is_too_narrow_for_clustered_data() -> None:
    values = _clustered(40, 100, window_sd=1.0, seed=4)
    naive = naive_token_ci(values.ravel())
    z = sps.norm.ppf(0.975)
    assert naive.high - naive.estimate == pytest.approx(z * values.std(ddof=1) / math.sqrt(values.size))
    clustered = window_bootstrap_ci(values.mean(axis=1), np.full(40, 100))
    assert clustered.estimate == pytest.approx(naive.estimate)
    assert (clustered.high - clustered.low) > 3 * (naive.high - naive.low)


def test_paired_difference_one_sided_bounds() -> None:
    rng = np.random.default_rng(5)
    base = rng.normal(0.85, 0.05, size=100)
    a, b = base + 0.02 + rng.normal(0, 0.005, 100), base
    two = paired_difference_ci(a, b, None)
    lower = paired_difference_ci(a, b, None, one_sided=True, higher_is_better=True)
    upper = paired_difference_ci(a, b, None, one_sided=True, higher_is_better=False)
    assert two.low < lower.low < 0.02 < upper.high < two.high
    assert lower.high == math.inf and upper.low == -math.inf
    assert lower.to_dict()["high"] is None


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_non_inferiority_clear_cases(higher_is_better: bool) -> None:
    rng = np.random.default_rng(6)
    ref = rng.normal(0.5, 0.05, size=200)
    sign = 1.0 if higher_is_better else -1.0
    close = ref + rng.normal(0, 0.005, size=200)
    worse = ref - sign * 0.1 + rng.normal(0, 0.005, size=200)
    counts = rng.integers(100, 200, size=200)
    ok = non_inferiority(close, ref, counts, margin=0.02, higher_is_better=higher_is_better)
    bad = non_inferiority(worse, ref, counts, margin=0.02, higher_is_better=higher_is_better)
    assert ok["non_inferior"] is True and bad["non_inferior"] is False
    assert bad["difference"] == pytest.approx(-sign * 0.1, abs=0.01)
    assert set(ok) >= {"difference", "bound", "margin", "non_inferior", "confidence"}
    json.dumps(ok)


def test_non_inferiority_identical_is_degenerate_but_decides() -> None:
    ref = np.linspace(0.8, 0.9, 20)
    result = non_inferiority(ref, ref, None, margin=0.01, higher_is_better=True)
    assert result["bound"] == 0.0 and result["non_inferior"] is True
    with pytest.raises(ValueError, match="margin"):
        non_inferiority(ref, ref, None, margin=-0.01, higher_is_better=True)


def test_seed_interval_matches_t_by_hand() -> None:
    values = [0.861, 0.874, 0.869, 0.858]
    mean, sd, n = np.mean(values), np.std(values, ddof=1), len(values)
    half = sps.t.ppf(0.975, df=n - 1) * sd / math.sqrt(n)
    ci = seed_interval(values)
    assert (ci.low, ci.high) == pytest.approx((mean - half, mean + half), abs=1e-12)
    assert not ci.degenerate


def test_seed_interval_degenerate() -> None:
    one = seed_interval([0.87])
    assert one.degenerate and one.low == one.high == one.estimate == 0.87
    assert isinstance(one, CI) and seed_interval([0.5, 0.5]).degenerate
