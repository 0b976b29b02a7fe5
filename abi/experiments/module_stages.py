"""Claim 1's two training stages (domain stage, corrMSE calibration to the anchor), kept on disk.

Claims 1 and 3 share the anchor, the ceiling anchor and the candidates, so both train them through
:func:`domain_trained`; claim 1's calibrations (full and dose-response) go through :func:`calibrated`.
Both read a module from :mod:`abi.module_store` when the same stage ran before and train it otherwise.
The stored stage is keyed by this module's import graph, not by claim 1's notebook code: an edit to a
report, a figure or the claim's orchestration (:mod:`abi.experiments.core_nib`) retrains nothing.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from abi.backbones import Backbone
from abi.evaluate import score_variants
from abi.experiments.common import TappedModule, untrained_module
from abi.features import FeatureSet
from abi.module import ModuleConfig
from abi.module_store import code_digest, state_digest, trained
from abi.nib import get_protocol
from abi.schedule import PhaseSchedule
from abi.train import PlateauRule, calibrate, module_corrections, train_domain_stage

# Parameters the domain stage reads besides the module's shape and seed (which its start state holds).
DOMAIN_KEYS = (
    "domain_steps",
    "domain_lr",
    "domain_batch_windows",
    "domain_head_dtype",
    "domain_eval_every",
    "domain_patience",
    "domain_min_delta",
    "feature_dtype",
)
HEAD_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


class StageSetup(Protocol):
    """What the stages read of a prepared setting (:class:`abi.experiments.core_nib.Setup`)."""

    params: dict[str, Any]
    setting: str
    backbone: Backbone
    feature_taps: tuple[int, ...]
    fingerprint_before: str
    train: FeatureSet
    domain_val: FeatureSet
    curve: FeatureSet


def make_module(setup: StageSetup, role: str, seed: int) -> TappedModule:
    """A freshly initialised module of the anchor's shape (``role="anchor"``) or the candidate's."""
    params = setup.params
    if role == "anchor":
        taps, bottleneck = params["anchor_taps"], params["anchor_bottleneck"]
        per_tap_norm = params["anchor_per_tap_norm"]
    else:
        taps, bottleneck, per_tap_norm = params["candidate_taps"], params["candidate_bottleneck"], True
    config = ModuleConfig(
        d_model=setup.backbone.d_model,
        n_taps=len(taps),
        bottleneck=bottleneck,
        expansion=params["expansion"],
        per_tap_norm=per_tap_norm,
    )
    module = untrained_module(config, seed, zero_init_proj_out=params["proj_out_init"] == "zero")
    return TappedModule(module, taps, setup.feature_taps)


def plateau_rule(params: dict[str, Any]) -> PlateauRule:
    """The domain stage's stopping rule, from the parameters (checked in claim 1's ``validate``)."""
    return PlateauRule(
        every=params["domain_eval_every"], patience=params["domain_patience"], min_delta=params["domain_min_delta"]
    )


def head_dtype(params: dict[str, Any]) -> torch.dtype | None:
    """Precision of the frozen vocabulary projection in the domain stage's training steps (validation
    and evaluation always use float32)."""
    name = params["domain_head_dtype"]
    if name not in HEAD_DTYPES:
        raise ValueError(f"unknown domain_head_dtype {name!r}; valid values: {', '.join(HEAD_DTYPES)}.")
    return HEAD_DTYPES[name]


def run_domain_stage(setup: StageSetup, module: TappedModule, seed: int, label: str) -> dict[str, Any]:
    """Train ``module`` on the domain through the frozen head until its validation loss plateaus
    (at most ``domain_steps`` steps); returns the log (per-step losses, evaluations, stopping step)."""
    params = setup.params
    log = train_domain_stage(
        module,
        setup.backbone,
        setup.train,
        params["domain_steps"],
        lr=params["domain_lr"],
        batch_windows=params["domain_batch_windows"],
        seed=seed,
        desc=f"{setup.setting}: domain stage, {label}",
        validation=setup.domain_val,
        plateau=plateau_rule(params),
        head_dtype=head_dtype(params),
    )
    return {
        "losses": log.losses,
        "evaluations": log.evaluations,
        "best_step": log.best_step,
        "steps_run": len(log.losses),
    }


def _stage_code() -> str:
    return code_digest(__name__)


def _frozen_inputs(setup: StageSetup) -> dict[str, Any]:
    """What every stage of a setting reads besides its own data: the frozen backbone and its taps."""
    return {
        "setting": setup.setting,
        "backbone": setup.fingerprint_before,
        "correction_site": setup.backbone.correction_site,
        "feature_taps": list(setup.feature_taps),
    }


def domain_trained(setup: StageSetup, role: str, seed: int, label: str) -> tuple[TappedModule, dict[str, Any]]:
    """A module of ``role``'s shape after its domain stage, and the stage's log (``from_cache`` says
    whether it was read from the store, where any claim may have put it)."""
    module = make_module(setup, role, seed)
    identity = {
        **_frozen_inputs(setup),
        "seed": seed,
        "params": {key: setup.params[key] for key in DOMAIN_KEYS},
        "train_windows": setup.train.windows.content_hash(),
        "validation_windows": setup.domain_val.windows.content_hash(),
    }
    log = trained(
        "domain",
        f"{setup.setting}-{role}-{seed}",
        module,
        identity,
        _stage_code(),
        lambda: run_domain_stage(setup, module, seed, label),
    )
    return module, log


def curve_probe(setup: StageSetup, anchor: TappedModule, targets: torch.Tensor):
    """Calibration-curve callback: held-out corrMSE and NIB on validation windows."""
    curve = setup.curve
    skip = get_protocol(setup.params["protocol"]).skip

    def probe(step: int, module: TappedModule) -> dict[str, float]:
        with torch.no_grad():
            corrections = torch.cat([module(taps) for _, taps, _, _ in curve.iter_batches(16)])
        _, scores = score_variants(setup.backbone, curve, anchor, {"m": module}, skip, desc=f"curve@{step}")
        per_window = scores["m"].per_window
        weights = np.asarray(per_window["n_positions"], dtype=float)
        summary = {k: float(np.average(per_window[k], weights=weights)) for k in ("top5", "top1", "js")}
        return {
            "val_corr_mse": float((corrections - targets).pow(2).mean()),
            **{f"val_{k}": v for k, v in summary.items()},
        }

    return probe


def calibration_schedule(params: dict[str, Any], steps_parameter: str = "calibration_steps") -> PhaseSchedule:
    """The release's four-phase calibration schedule over ``params[steps_parameter]`` steps."""
    return PhaseSchedule.release_calibration(params[steps_parameter], params["calibration_lr"])


def calibrated(
    setup: StageSetup,
    module: TappedModule,
    anchor: TappedModule,
    features: FeatureSet,
    schedule: PhaseSchedule,
    seed: int,
    label: str,
    with_curve: bool = False,
) -> dict[str, Any]:
    """Calibrate ``module`` in place to ``anchor``'s corrections on ``features`` (corrMSE, the release's
    schedule) and return the log; ``with_curve`` adds the held-out calibration curve every
    ``curve_every`` steps. Read from the store when the same calibration ran before."""
    params = setup.params
    identity = {
        **_frozen_inputs(setup),
        "seed": seed,
        "anchor": state_digest(anchor),
        "windows": features.windows.content_hash(),
        "schedule": {
            "phase_steps": schedule.phase_steps,
            "phase_lrs": schedule.phase_lrs,
            "warmup": schedule.warmup_steps,
        },
        "batch_windows": params["calibration_batch_windows"],
        "feature_dtype": params["feature_dtype"],
        "curve": (
            {
                "windows": setup.curve.windows.content_hash(),
                "every": params["curve_every"],
                "protocol": params["protocol"],
            }
            if with_curve
            else None
        ),
    }

    def run() -> dict[str, Any]:
        targets = module_corrections(anchor, features)
        probe = curve_probe(setup, anchor, module_corrections(anchor, setup.curve)) if with_curve else None
        log = calibrate(
            module,
            features,
            targets,
            schedule,
            batch_windows=params["calibration_batch_windows"],
            seed=seed,
            on_step=probe,
            eval_every=params["curve_every"] if with_curve else 0,
            desc=label,
        )
        return log.to_dict()

    return trained("calibration", label, module, identity, _stage_code(), run)
