"""Score model variants against a reference on the same held-out windows, batch by batch.

A *variant* is the frozen backbone plus an optional module (``None``: the bare backbone).
Logits of a 49k-262k vocabulary do not fit in memory for hundreds of windows, so logits are
made per batch of windows, compared at once, and only per-window aggregates (the raw data of
every result file) and per-position JS/KL (for distribution tails) are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from abi.backbones import Backbone
from abi.features import IGNORE_INDEX, FeatureSet
from abi.nib import nib_position_metrics, per_window_metrics
from abi.progress import tqdm
from abi.train import module_logits

Variants = dict[str, nn.Module | None]


@dataclass
class VariantScores:
    """Raw scores of one variant: per-window NIB metrics vs the reference, and per-window NLL."""

    per_window: dict[str, list[float]] = field(default_factory=dict)
    nll_sum: list[float] = field(default_factory=list)
    n_tokens: list[int] = field(default_factory=list)
    position_js: list[np.ndarray] = field(default_factory=list)
    position_kl: list[np.ndarray] = field(default_factory=list)
    effect_per_window: dict[str, list[float]] = field(default_factory=dict)

    def extend(self, window_metrics: dict[str, np.ndarray]) -> None:
        for key, values in window_metrics.items():
            self.per_window.setdefault(key, []).extend(np.asarray(values, dtype=float).tolist())

    def extend_effect(self, window_metrics: dict[str, np.ndarray]) -> None:
        for key, values in window_metrics.items():
            self.effect_per_window.setdefault(key, []).extend(np.asarray(values, dtype=float).tolist())

    def positions(self) -> dict[str, np.ndarray]:
        return {"js": np.concatenate(self.position_js), "kl": np.concatenate(self.position_kl)}


def effect_window_metrics(metrics: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-window means over the *effect positions* only (``mask``), and their count per window.

    Unlike :func:`abi.nib.per_window_metrics`, a window may hold no effect position: its means are 0
    with weight 0, so position-weighted summaries (:func:`abi.nib.summary_from_per_window`) ignore it.
    """
    counts = mask.sum(-1)
    out = {
        key: (torch.where(mask, values, 0.0).sum(-1) / counts.clamp_min(1)).numpy() for key, values in metrics.items()
    }
    out["n_positions"] = counts.numpy().astype(np.int64)
    return out


def _nll_per_window(logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[float], list[int]]:
    losses = nn.functional.cross_entropy(
        logits.transpose(1, 2).float(), labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    valid = labels != IGNORE_INDEX
    return losses.sum(dim=1).double().tolist(), valid.sum(dim=1).tolist()


@torch.no_grad()
def score_variants(
    backbone: Backbone,
    features: FeatureSet,
    reference: nn.Module | None,
    variants: Variants,
    skip: int,
    batch_windows: int = 4,
    desc: str = "NIB",
    effect_positions: bool = False,
) -> tuple[VariantScores, dict[str, VariantScores]]:
    """NIB of every variant against ``reference`` and perplexity data of all of them.

    Positions before ``skip`` in each window are not NIB-scored (protocol rule); perplexity uses
    every position with a known next token. Returns ``(reference_scores, {name: scores})``;
    the reference's ``per_window`` is empty (it is not compared with itself).

    ``effect_positions=True`` also scores every variant on the positions where the reference's
    top-1 token differs from the bare backbone's (``effect_per_window``): where the reference module
    changes the prediction, which is where two modules can agree or disagree about the domain.
    """
    if not 0 <= skip < features.windows.seq_len:
        raise ValueError(f"skip={skip} must be in [0, {features.windows.seq_len}) for windows of that length.")
    mask_row = torch.arange(features.windows.seq_len) >= skip
    ref_scores = VariantScores()
    scores = {name: VariantScores() for name in variants}
    for _, taps, final, labels in tqdm(
        features.iter_batches(batch_windows),
        total=-(-len(features) // batch_windows),
        desc=f"{desc} ({len(variants)} variants)",
        unit="batch",
    ):
        mask = mask_row.expand(labels.shape[0], -1)
        ref_logits = module_logits(backbone, reference, taps, final)
        if effect_positions:
            bare_top1 = module_logits(backbone, None, taps, final).argmax(-1)
            effect_mask = mask & (ref_logits.argmax(-1) != bare_top1)
        nll, count = _nll_per_window(ref_logits, labels)
        ref_scores.nll_sum.extend(nll)
        ref_scores.n_tokens.extend(count)
        for name, module in variants.items():
            logits = module_logits(backbone, module, taps, final)
            positions = nib_position_metrics(ref_logits, logits, mask=mask)
            target = scores[name]
            target.extend(per_window_metrics(positions, mask))
            if effect_positions:
                target.extend_effect(effect_window_metrics(positions, effect_mask))
            target.position_js.append(positions["js"][mask].numpy())
            target.position_kl.append(positions["kl_ac"][mask].numpy())
            nll, count = _nll_per_window(logits, labels)
            target.nll_sum.extend(nll)
            target.n_tokens.extend(count)
    return ref_scores, scores


def perplexity(scores: VariantScores) -> float:
    """Token-level perplexity over all scored windows."""
    return float(np.exp(np.sum(scores.nll_sum) / np.sum(scores.n_tokens)))
