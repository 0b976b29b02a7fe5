"""Smoothing of per-step training logs, shared by the claims' training-curve figures."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def rolling_mean(values: Sequence[float], window: int) -> np.ndarray:
    """Mean of every ``window`` consecutive values (complete windows only): per-step losses are too noisy
    to read. A window longer than the series shrinks to its length, so a short log still gives a point."""
    values = np.asarray(values, dtype=float)
    window = max(1, min(window, len(values)))
    return np.convolve(values, np.ones(window) / window, mode="valid")


def rolling_curve(values: Sequence[float], window: int) -> tuple[np.ndarray, np.ndarray]:
    """The rolling mean and the step each of its points ends at, ready to plot."""
    means = rolling_mean(values, window)
    steps = np.arange(len(means)) + len(values) - len(means)
    return steps, means
