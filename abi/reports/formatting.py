"""Metric names and number formats shared by the claims' reports, so every chapter words them the same way."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# Column headings of the NIB metrics and perplexity in every report table.
METRIC_LABELS = {"top5": "top-5", "top1": "top-1", "js": "JS", "entropy_diff": "entropy diff", "ppl": "perplexity"}


def is_defined(value: Any) -> bool:
    """A number that can be printed: stored intervals over one seed hold ``None`` (JSON has no NaN)."""
    return value is not None and math.isfinite(value)


def formatted_interval(stats: Mapping[str, Any], number: Callable[[float], str]) -> str:
    """``estimate (low to high)`` of an interval record, each written by ``number`` (the book's one interval
    format: "to", not a hyphen that reads as a minus); the estimate alone when the interval is undefined
    (a single seed), ``undefined`` when the estimate is."""
    estimate, low, high = stats["estimate"], stats.get("low"), stats.get("high")
    if not is_defined(estimate):
        return "undefined"
    if not (is_defined(low) and is_defined(high)):
        return number(estimate)
    return f"{number(estimate)} ({number(low)} to {number(high)})"


def interval(stats: Mapping[str, Any], digits: int = 4, scale: float = 1.0) -> str:
    """An interval with ``digits`` decimals after multiplying by ``scale``: ``0.9785 (0.9772 to 0.9798)``."""
    return formatted_interval(stats, lambda value: f"{value * scale:.{digits}f}")


def percent_interval(stats: Mapping[str, Any]) -> str:
    """An interval of fractions as percentages with one decimal: ``12.7% (3.1% to 22.4%)``."""
    return formatted_interval(stats, lambda value: f"{value:.1%}")


def compact_number(value: float) -> str:
    """Four decimals, or scientific notation for values too small to show that way (a JS of 3e-4)."""
    return f"{value:.2e}" if abs(value) < 0.01 else f"{value:.4f}"


def count_of(flags: Iterable[bool]) -> str:
    """``k of n``: how many of the seeds (or runs) a statement holds for."""
    flags = list(flags)
    return f"{sum(flags)} of {len(flags)}"
