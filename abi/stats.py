"""Statistics beyond the original: the evaluation window, not the token, is the unit.

Tokens inside one window share context, so their NIB values are correlated; the original's
token-level interval (``naive_token_ci``) is too narrow by roughly the design effect. Here
intervals resample whole windows (clustered bootstrap), differences are paired by window,
non-inferiority uses a one-sided bound against a margin fixed in advance, and training-seed
spread gets a t-interval. Every result is plain floats/bools so it can go into JSON.

Bootstrap method: BCa (bias-corrected and accelerated) by default, because per-window JS
and KL means are right-skewed and BCa corrects for skew and bias; when BCa cannot be
computed (it returns NaN on degenerate resamples) we fall back to the percentile method and
record that in ``CI.method``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

_BOOT_METHOD = "BCa"


@dataclass(frozen=True)
class CI:
    """A point estimate and interval; an open side of a one-sided interval is +-inf."""

    estimate: float
    low: float
    high: float
    confidence: float
    method: str
    degenerate: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: infinite bounds become None (strict JSON has no Infinity)."""
        out = asdict(self)
        for key in ("low", "high"):
            if not math.isfinite(out[key]):
                out[key] = None
        return out


def _vector(values: ArrayLike, name: str) -> np.ndarray:
    """A finite 1-D float64 array, or an error naming the argument."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be a non-empty 1-D array of finite numbers")
    return arr


def _weights(n_positions: ArrayLike | None, size: int) -> np.ndarray:
    """Positions per window (equal weights when None), checked against the window count."""
    if n_positions is None:
        return np.ones(size)
    w = _vector(n_positions, "n_positions")
    if w.size != size or (w < 0).any() or w.sum() <= 0:
        raise ValueError(
            f"n_positions needs {size} non-negative counts with a positive sum (one per "
            f"window, as per_window_metrics returns), got {w.size}"
        )
    return w


def _weighted_mean(values: np.ndarray, weights: np.ndarray, axis: int = -1) -> np.ndarray:
    """sum(mean_i * n_i) / sum(n_i): the pooled position mean from per-window means."""
    return np.sum(values * weights, axis=axis) / np.sum(weights, axis=axis)


def _check_confidence(confidence: float) -> None:
    """Reject levels like 95 (percent) that would silently give nonsense."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), e.g. 0.95, got {confidence}")


def _bootstrap(
    values: np.ndarray,
    weights: np.ndarray,
    confidence: float,
    n_resamples: int,
    seed: int,
    alternative: str,
) -> tuple[float, float, str]:
    """Window-resampling bootstrap of the weighted mean; BCa, else percentile."""
    for method in (_BOOT_METHOD, "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.bootstrap(
                (values, weights),
                _weighted_mean,
                paired=True,
                vectorized=True,
                n_resamples=n_resamples,
                confidence_level=confidence,
                alternative=alternative,
                method=method,
                rng=np.random.default_rng(seed),
            )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (math.isnan(low) or math.isnan(high)):
            label = method if method == _BOOT_METHOD else f"percentile ({_BOOT_METHOD} failed)"
            return low, high, f"window bootstrap {label}"
    raise RuntimeError("bootstrap returned NaN with both BCa and percentile; check the inputs")


def _window_ci(
    values: np.ndarray,
    weights: np.ndarray,
    confidence: float,
    n_resamples: int,
    seed: int,
    alternative: str = "two-sided",
) -> CI:
    """Shared core of the window CIs, with the degenerate cases answered without scipy."""
    _check_confidence(confidence)
    estimate = float(_weighted_mean(values, weights))
    used = weights > 0
    if used.sum() < 2 or np.ptp(values[used]) == 0.0:
        return CI(estimate, estimate, estimate, confidence, "degenerate", degenerate=True)
    low, high, method = _bootstrap(values, weights, confidence, n_resamples, seed, alternative)
    return CI(estimate, low, high, confidence, method)


def window_bootstrap_ci(
    per_window_means: ArrayLike,
    n_positions: ArrayLike | None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> CI:
    """Two-sided CI of the position-weighted mean, resampling windows with replacement.

    One window, or identical window means, returns low = high = estimate (degenerate=True).
    """
    values = _vector(per_window_means, "per_window_means")
    return _window_ci(values, _weights(n_positions, values.size), confidence, n_resamples, seed)


def paired_difference_ci(
    a_per_window: ArrayLike,
    b_per_window: ArrayLike,
    n_positions: ArrayLike | None,
    confidence: float = 0.95,
    one_sided: bool = False,
    higher_is_better: bool = True,
    n_resamples: int = 2000,
    seed: int = 0,
) -> CI:
    """CI of the weighted mean of (a - b), windows paired (same windows for both).

    Pairing removes the window-difficulty variance both models share. With ``one_sided`` the
    interval is [lower, inf) when higher is better, else (-inf, upper]: the bound that a
    non-inferiority test needs.
    """
    a = _vector(a_per_window, "a_per_window")
    b = _vector(b_per_window, "b_per_window")
    if a.size != b.size:
        raise ValueError(f"a has {a.size} windows but b has {b.size}; pair the same windows")
    alternative = "two-sided"
    if one_sided:
        alternative = "greater" if higher_is_better else "less"
    ci = _window_ci(a - b, _weights(n_positions, a.size), confidence, n_resamples, seed, alternative)
    if not one_sided:
        return ci
    low, high = (ci.low, math.inf) if higher_is_better else (-math.inf, ci.high)
    return CI(ci.estimate, low, high, confidence, ci.method, ci.degenerate)


def non_inferiority(
    candidate_per_window: ArrayLike,
    reference_per_window: ArrayLike,
    n_positions: ArrayLike | None,
    margin: float,
    higher_is_better: bool,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """One-sided non-inferiority of candidate vs reference with a margin fixed in advance.

    Non-inferior when the one-sided bound of (candidate - reference) stays inside the margin:
    lower bound > -margin if higher is better (top-1/top-5), upper bound < +margin if lower
    is better (JS, entropy difference).
    """
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0 in the metric's units, got {margin}")
    ci = paired_difference_ci(
        candidate_per_window,
        reference_per_window,
        n_positions,
        confidence=confidence,
        one_sided=True,
        higher_is_better=higher_is_better,
        n_resamples=n_resamples,
        seed=seed,
    )
    bound = ci.low if higher_is_better else ci.high
    ok = bound > -margin if higher_is_better else bound < margin
    return {
        "difference": ci.estimate,
        "bound": float(bound),
        "margin": float(margin),
        "non_inferior": bool(ok),
        "confidence": float(confidence),
        "higher_is_better": bool(higher_is_better),
        "method": ci.method,
    }


def _groups(window_ids: ArrayLike, size: int) -> np.ndarray:
    """Integer cluster codes for any window labels."""
    ids = np.asarray(window_ids).reshape(-1)
    if ids.size != size:
        raise ValueError(f"window_ids has {ids.size} entries for {size} values; one per value")
    return np.unique(ids, return_inverse=True)[1].reshape(-1)


def design_effect(per_position_values: ArrayLike, window_ids: ArrayLike) -> float:
    """Variance of the mean under window clustering / variance if positions were independent.

    Computed directly from the two estimates (not via Kish's 1 + (m-1)*ICC, which it matches
    for equal-sized windows): the cluster-robust (linearisation) variance of the pooled mean,
    G/(G-1) * sum_g (sum_{i in g} (y_i - ybar))^2 / N^2, over the iid variance s^2/N. It is
    ~1 for independent positions and up to the window size for fully shared windows; the
    naive interval's width must be multiplied by sqrt(deff). Returns 1.0 when all values are
    equal (no variance for clustering to inflate).
    """
    y = _vector(per_position_values, "per_position_values")
    codes = _groups(window_ids, y.size)
    n_groups = int(codes.max()) + 1
    if n_groups < 2 or y.size < 3:
        raise ValueError("design_effect needs at least 2 windows and 3 positions")
    resid_sums = np.bincount(codes, weights=y - y.mean(), minlength=n_groups)
    var_cluster = n_groups / (n_groups - 1) * np.sum(resid_sums**2) / y.size**2
    var_iid = y.var(ddof=1) / y.size
    return 1.0 if var_iid == 0.0 else float(var_cluster / var_iid)


def naive_token_ci(per_position_values: ArrayLike, confidence: float = 0.95) -> CI:
    """Normal-approximation CI treating every token as independent: what the original did
    for its "extended" interval, kept only to show how much too narrow it is."""
    _check_confidence(confidence)
    y = _vector(per_position_values, "per_position_values")
    estimate = float(y.mean())
    if y.size < 2:
        return CI(estimate, estimate, estimate, confidence, "degenerate", degenerate=True)
    half = stats.norm.ppf(0.5 + confidence / 2) * y.std(ddof=1) / math.sqrt(y.size)
    return CI(estimate, estimate - float(half), estimate + float(half), confidence, "normal iid")


def seed_interval(values_over_seeds: ArrayLike, confidence: float = 0.95) -> CI:
    """Student-t CI of the mean across training seeds (few seeds, so t, not normal).

    One seed, or identical values, gives low = high = estimate with degenerate=True.
    """
    _check_confidence(confidence)
    y = _vector(values_over_seeds, "values_over_seeds")
    estimate = float(y.mean())
    sem = float(stats.sem(y)) if y.size > 1 else 0.0
    if sem == 0.0:
        return CI(estimate, estimate, estimate, confidence, "degenerate", degenerate=True)
    low, high = stats.t.interval(confidence, df=y.size - 1, loc=estimate, scale=sem)
    return CI(estimate, float(low), float(high), confidence, "student t over seeds")


def paired_window_statistic_ci(
    per_window: Mapping[str, ArrayLike],
    statistic: Callable[[dict[str, np.ndarray]], ArrayLike],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> CI:
    """Percentile CI of any statistic of several per-window arrays, the windows resampled jointly.

    ``per_window`` maps names to arrays with one value per window (the same windows in every
    array); ``statistic`` takes a dict of the same names whose arrays have a leading resample
    axis, ``[R, n_windows]``, and returns ``[R]``. Resampling one set of window indices for all
    arrays keeps conditions paired (the same windows enter every condition of a resample).

    For ratios (transfer efficacy, flip rates) the percentile method is used: BCa's jackknife
    acceleration is unstable when a denominator comes near zero. Resamples where the statistic
    is undefined (NaN) are left out and counted in ``CI.method``.
    """
    _check_confidence(confidence)
    arrays = {name: _vector(values, name) for name, values in per_window.items()}
    sizes = {arr.size for arr in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"per-window arrays of unequal length {sorted(sizes)}; pass one value per window each")
    n = sizes.pop()
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = float(np.asarray(statistic({k: v[None, :] for k, v in arrays.items()})).reshape(-1)[0])
    if n < 2:
        return CI(estimate, estimate, estimate, confidence, "degenerate", degenerate=True)
    index = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.asarray(statistic({k: v[index] for k, v in arrays.items()}), dtype=np.float64).reshape(-1)
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return CI(estimate, math.nan, math.nan, confidence, "window bootstrap percentile (undefined)", True)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(defined, [alpha, 1.0 - alpha])
    method = "window bootstrap percentile (paired)"
    if defined.size < values.size:
        method += f", {values.size - defined.size} of {values.size} resamples undefined"
    return CI(estimate, float(low), float(high), confidence, method, bool(low == high))
