"""Figures, built only from result files (never from live objects), stamped with the result's hash.

Shared helpers live here; each claim's figures live in ``abi.plotting.<claim>``.

Every PNG carries ``abi_result_sha256`` in its metadata: the hash of the result content it was
drawn from, so a verifier can tell a stale figure from a current one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from abi.nib import NIB_THRESHOLDS  # noqa: E402

METRIC_LABELS = {
    "top5": "top-5 overlap",
    "top1": "top-1 agreement",
    "js": "Jensen-Shannon (nats)",
    "entropy_diff": "entropy difference (nats)",
}
THRESHOLDS = {
    "top5": NIB_THRESHOLDS.top5_min,
    "top1": NIB_THRESHOLDS.top1_min,
    "js": NIB_THRESHOLDS.js_max,
    "entropy_diff": NIB_THRESHOLDS.entropy_diff_max,
}


def result_hash(result: dict[str, Any]) -> str:
    """Hash of a result's content, independent of JSON formatting."""
    return hashlib.sha256(json.dumps(result, sort_keys=True, allow_nan=False, default=str).encode()).hexdigest()


def save_figure(fig: plt.Figure, path: Path, result: dict[str, Any]) -> Path:
    """Save atomically with the result's hash in the PNG metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight", metadata={"abi_result_sha256": result_hash(result)})
    plt.close(fig)
    tmp.replace(path)
    return path


def figure_result_hash(path: Path) -> str | None:
    """The result hash stamped into a PNG by :func:`save_figure` (None if absent)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.info.get("abi_result_sha256")
