"""Figures, built only from result files (never from live objects), stamped with where they came from.

Shared helpers live here; each claim's figures live in ``abi.plotting.<claim>``, which declares
them once in ``FIGURES`` (file stem -> what it shows). The verifier expects exactly those files,
and :func:`save_figure` refuses any other name, so the list cannot drift from what the notebooks draw.

Every PNG carries two text stamps in its metadata: ``abi_result_sha256``, the hash of the result
content it was drawn from (a stale figure no longer matches), and ``abi_figure``, its own file
stem (a figure copied or swapped under another name no longer matches its file).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from abi.nib import NIB_THRESHOLDS  # noqa: E402
from abi.results import content_hash  # noqa: E402

RESULT_STAMP = "abi_result_sha256"
NAME_STAMP = "abi_figure"

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
    """Hash of a result's content, independent of JSON formatting and of its seal: the result file's
    own ``content_sha256``, so a figure drawn before the file was sealed still matches it."""
    return content_hash(result)


def loaded_figures() -> dict[str, str]:
    """The figures declared by the plotting modules imported so far, file stem -> what it shows (a figure is
    saved by its own module, so it is always among them; :func:`abi.claims.declared_figures` imports them all)."""
    declared: dict[str, str] = {}
    for name, module in sorted(sys.modules.items()):
        if not name.startswith(f"{__name__}.") or module is None:
            continue
        for stem, text in getattr(module, "FIGURES", {}).items():
            if stem in declared:
                raise ValueError(f"figure {stem!r} is declared twice (again in {name}.FIGURES)")
            declared[stem] = text
    return declared


def save_figure(fig: plt.Figure, path: Path, result: dict[str, Any]) -> Path:
    """Save atomically, stamped with the result's hash and the figure's own name; an undeclared name is refused,
    so the verifier's list of expected figures is always the list of figures drawn."""
    path = Path(path)
    declared = loaded_figures()
    if path.stem not in declared:
        plt.close(fig)
        raise ValueError(
            f"{path.name}: not a declared figure; add {path.stem!r} to FIGURES of its abi.plotting "
            f"module (declared: {', '.join(sorted(declared))})."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    stamps = {RESULT_STAMP: result_hash(result), NAME_STAMP: path.stem}
    fig.savefig(tmp, dpi=120, bbox_inches="tight", metadata=stamps)
    plt.close(fig)
    tmp.replace(path)
    return path


def figure_stamps(path: Path) -> dict[str, str]:
    """A PNG's text stamps, once the file is proven a complete PNG (a truncated or garbage file raises)."""
    from PIL import Image

    with Image.open(path) as image:
        if image.format != "PNG":
            raise ValueError(f"a {image.format} image, not a PNG")
        image.verify()  # chunk structure and checksums, up to IEND
    with Image.open(path) as image:
        image.load()  # every pixel decodes
        return dict(image.text)


def figure_result_hash(path: Path) -> str | None:
    """The result hash stamped into a PNG by :func:`save_figure` (None if absent)."""
    return figure_stamps(path).get(RESULT_STAMP)
