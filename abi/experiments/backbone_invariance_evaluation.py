"""Claim 4, the evaluation block: every condition scored on the same held-out code windows, batch by
batch, into one backbone's raw result block (per-window NLL, argmax hits, flips, NIB of B' against
B); ``backbone_invariance_stats`` derives every summary from it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from abi.experiments.backbone_invariance_setup import Setup
from abi.experiments.backbone_invariance_stats import CONDITION_LABELS
from abi.experiments.backbone_invariance_training import Trained
from abi.features import IGNORE_INDEX
from abi.finetune import token_nll
from abi.module import count_parameters
from abi.nib import nib_position_metrics, per_window_metrics
from abi.progress import tqdm
from abi.results import backbone_record
from abi.train import module_logits


def _window_nll(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    return token_nll(logits, labels).sum(dim=1).double().tolist()


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=-1) == labels) & (labels != IGNORE_INDEX)


class _Collector:
    """Per-window raw values, appended batch by batch."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, list]] = {}

    def add(self, group: str, name: str, values: list) -> None:
        self.values.setdefault(group, {}).setdefault(name, []).extend(values)


@torch.no_grad()
def evaluate(setup: Setup, trained: Trained, batch_windows: int = 4) -> dict[str, Any]:
    """Score every condition on the same held-out windows; returns the backbone's raw result block."""
    base, skip = setup.backbone, setup.protocol.skip
    collected = _Collector()
    nib: dict[str, dict[str, Any]] = {}
    mask_row = torch.arange(setup.code_eval.seq_len) >= skip
    batches = zip(
        setup.held_out.iter_batches(batch_windows),
        *(arm.held_out.iter_batches(batch_windows) for arm in trained.updates.values()),
    )
    with setup.watch.time("evaluation"):
        for (_, taps, final, labels), *updated in tqdm(
            batches, total=-(-len(setup.held_out) // batch_windows), desc=f"scoring ({base.name})", unit="batch"
        ):
            collected.add("windows", "n_tokens", (labels != IGNORE_INDEX).sum(dim=1).tolist())
            logits = {
                "B/raw": module_logits(base, None, taps, final),
                "B/module": module_logits(base, trained.module, taps, final),
                "B/fresh": module_logits(base, trained.fresh, taps, final),
            }
            correct = {name: _correct(logits[name], labels) for name in ("B/raw", "B/module")}
            for name in ("B/raw", "B/module"):
                collected.add("correct", name, correct[name].sum(dim=1).tolist())
            mask = mask_row.expand(labels.shape[0], -1)
            for (update, arm), (_, updated_taps, updated_final, updated_labels) in zip(
                trained.updates.items(), updated
            ):
                if not torch.equal(updated_labels, labels):
                    raise RuntimeError("B and B' features are not aligned on the same windows.")
                updated_backbone = arm.run.backbone
                logits[f"{update}/raw"] = module_logits(updated_backbone, None, updated_taps, updated_final)
                logits[f"{update}/zero_shot"] = module_logits(
                    updated_backbone, trained.module, updated_taps, updated_final
                )
                logits[f"{update}/oracle"] = module_logits(updated_backbone, arm.oracle, updated_taps, updated_final)
                for kind, before, after in (
                    ("module", "B/module", f"{update}/zero_shot"),
                    ("raw", "B/raw", f"{update}/raw"),
                ):
                    right_after = _correct(logits[after], labels)
                    collected.add(
                        "negative_flips", f"{update}/{kind}", (correct[before] & ~right_after).sum(1).tolist()
                    )
                    valid = labels != IGNORE_INDEX
                    collected.add(
                        "positive_flips", f"{update}/{kind}", (~correct[before] & valid & right_after).sum(1).tolist()
                    )
                    metrics = per_window_metrics(nib_position_metrics(logits[before], logits[after], mask), mask)
                    record = nib.setdefault(
                        f"{update}/{kind}",
                        {"reference": CONDITION_LABELS[before], "candidate": after, "per_window": {}, "nll_sum": []},
                    )
                    for key, values in metrics.items():
                        record["per_window"].setdefault(key, []).extend(np.asarray(values).tolist())
            for name, value in logits.items():
                collected.add("nll", name, _window_nll(value, labels))
    for record in nib.values():
        record["nll_sum"] = collected.values["nll"][record["candidate"]]
    return _block(setup, trained, collected.values, nib)


def _block(setup: Setup, trained: Trained, values: dict[str, dict[str, list]], nib: dict) -> dict[str, Any]:
    """The backbone's raw result block; refuses the run if B's weights changed."""
    windows = values["windows"]
    return {
        "backbone": backbone_record(setup.backbone, setup.fingerprint_before),
        "taps": list(setup.taps),
        "window_layout": setup.protocol.to_dict(),
        "module": {"config": trained.module.config.to_dict(), "parameters": count_parameters(trained.module)},
        "data": {
            "code": setup.code.identity,
            "prose": setup.prose.identity,
            "code_eval_sha256": setup.code_eval.content_hash(),
            "prose_eval_sha256": setup.prose_eval.content_hash(),
            "prose_train_windows": len(setup.prose_train),
        },
        "updates": {
            update: {
                "backbone": {**arm.run.backbone.describe(), "fingerprint": arm.run.backbone.fingerprint()},
                "config": arm.run.config.to_dict(),
                "key": arm.run.key,
                "from_cache": arm.run.from_cache,
                "log": arm.run.log(),
            }
            for update, arm in trained.updates.items()
        },
        "windows": {
            "n_tokens": windows["n_tokens"],
            "nll": values["nll"],
            "correct": values["correct"],
            "negative_flips": values["negative_flips"],
            "positive_flips": values["positive_flips"],
        },
        "prose": {
            "n_tokens": trained.prose_tokens,
            "nll": {"B": trained.prose_nll_before, **{u: a.prose_nll for u, a in trained.updates.items()}},
        },
        "nib": nib,
        "training": trained.losses,
        "timings": setup.watch.timings,
    }
