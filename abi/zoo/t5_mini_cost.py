"""What t5-mini cost to train: the committed training log's facts, and a measured CPU rate of its recipe.

The book reports both beside claim 2 (whose source model t5-mini is): the device and time the
committed checkpoint took, and how long the same recipe would take on the machine that runs the
notebook, extrapolated from a few timed training steps.
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from abi.zoo import CHECKPOINT_DIR
from abi.zoo.t5_mini import NAME, Recipe, build_model


def training_facts() -> dict[str, Any]:
    """The committed checkpoint's training log: device, wall time, tokens processed, held-out perplexity."""
    log = json.loads((CHECKPOINT_DIR / NAME / "training_log.json").read_text())
    recipe = log["recipe"]
    tokens = recipe["steps"] * recipe["batch_windows"] * (recipe["prefix_len"] + recipe["cont_len"])
    return {
        "model": NAME,
        "device": log["device"],
        "torch": log["torch"],
        "train_wall_s": log["train_wall_s"],
        "steps": recipe["steps"],
        "batch_windows": recipe["batch_windows"],
        "tokens_processed": tokens,
        "device_tokens_per_s": round(tokens / log["train_wall_s"], 1),
        "n_parameters": log["n_parameters"],
        "best_step": log["best_step"],
        "test_perplexity": log["test_perplexity"],
        "test_windows": log["test_windows"],
    }


def cpu_probe(steps: int = 3, batch_windows: int = 16, seed: int = 0) -> dict[str, Any]:
    """Time a few steps of the recipe's training step (fp32, as the recipe runs on a CPU) on random
    tokens, after one warm-up step: the processed-token rate that extrapolates the recipe."""
    recipe = Recipe()
    torch.manual_seed(seed)
    model = build_model(recipe)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    generator = torch.Generator().manual_seed(seed)

    def step() -> None:
        prefix = torch.randint(4, recipe.vocab_size, (batch_windows, recipe.prefix_len), generator=generator)
        labels = torch.randint(4, recipe.vocab_size, (batch_windows, recipe.cont_len), generator=generator)
        loss = model(input_ids=prefix, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    tokens_per_s = steps * batch_windows * recipe.span / seconds
    recipe_tokens = recipe.steps * recipe.batch_windows * recipe.span
    return {
        "steps": steps,
        "batch_windows": batch_windows,
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens_per_s, 1),
        "recipe_hours_at_this_rate": round(recipe_tokens / tokens_per_s / 3600, 2),
    }
