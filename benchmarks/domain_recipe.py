"""Which domain-stage recipe trains a module well at the release's correction site, and in which domain?

Measured on claim 1's own windows (so the run also warms its feature cache): for each domain and
correction site, an anchor-shaped module is trained with each recipe (``proj_out`` initialisation and
learning rate) until its validation loss plateaus, and its held-out perplexity is compared with the bare
backbone's. Prints one JSON line per run and writes them all to ``--out``.

    python -m benchmarks.domain_recipe --out .cache/probes/domain_recipe.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from abi.experiments import core_nib, module_stages
from abi.train import mean_domain_loss

RECIPES = {"zero/1e-3": ("zero", 1e-3), "zero/3e-4": ("zero", 3e-4), "xavier/3e-4": ("xavier", 3e-4)}


def run(setting: str, recipes: list[str], overrides: dict) -> list[dict]:
    params = core_nib.validate("cpu", **overrides)
    setup = core_nib.prepare(params, setting)
    bare = mean_domain_loss(setup.backbone, None, setup.held_out)
    rows = []
    for name in recipes:
        init, lr = RECIPES[name]
        params.update(proj_out_init=init, domain_lr=lr)
        module = module_stages.make_module(setup, "anchor", params["anchor_seed"])
        start = time.perf_counter()
        log = module_stages.run_domain_stage(setup, module, params["anchor_seed"], name)
        seconds = time.perf_counter() - start
        loss = mean_domain_loss(setup.backbone, module, setup.held_out)
        row = {
            "setting": setting,
            "recipe": name,
            "steps_run": log["steps_run"],
            "best_step": log["best_step"],
            "seconds": round(seconds, 1),
            "s_per_step": round(seconds / max(log["steps_run"], 1), 3),
            "bare_ppl": float(torch.tensor(bare).exp()),
            "module_ppl": float(torch.tensor(loss).exp()),
            "val_curve": [(e["step"], round(e["val_loss"], 4)) for e in log["evaluations"]],
        }
        row["ppl_reduction"] = 1 - row["module_ppl"] / row["bare_ppl"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--plan",
        default="python-dialect:zero/1e-3,zero/3e-4,xavier/3e-4;python:zero/1e-3;"
        "python-dialect@before_final_norm:zero/1e-3",
        help="setting:recipe,recipe;... (settings as in claim 1's `settings` parameter)",
    )
    parser.add_argument("--dialect-words", type=int, default=None)
    args = parser.parse_args()
    rows = []
    for item in args.plan.split(";"):
        setting, recipes = item.split(":")
        rows += run(setting, recipes.split(","), {"dialect_words": args.dialect_words})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
