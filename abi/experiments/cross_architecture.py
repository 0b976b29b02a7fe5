"""Claim 2, cross-architecture migration: a domain module trained on a source model S moves to a
target T of another architecture, tokenizer and vocabulary by recalibrating only its interface.

The claim runs in *settings*: every pair ``S -> T`` in every domain of ``domains``, ``python`` (the
weak regime: the models already know Python) and ``python-dialect`` (the strong regime: a seeded
dialect of the same code, :mod:`abi.dialect`). A setting is testable only when the source module
matters on its own model (the regime gate, :mod:`abi.verdicts`). Per setting and training seed,
every arm is scored against the *native* T module (trained on T with the domain stage, its own
seed; the KD teacher, as in the original) on the same held-out T windows:

* ``migrated``: the S module, interface initialised by Procrustes, then KD of proj_in/proj_out
  only, domain part frozen (hash asserted) — the claim;
* ``random_module``: an untrained S module (random domain weights) through the identical
  Procrustes + KD (floor: what the calibration achieves with no domain knowledge to carry);
* ``procrustes_only``: the migrated module before KD (0 KD steps, mapped output projection);
* ``random_init_kd``: the S module's domain part with a random interface, then the same KD;
* ``also_trained``: Procrustes, then KD of *every* weight, as the original code did;
* ``no_module``: the bare target (floor);
* ``ceiling``: a second native T module with another seed (seed-noise ceiling).

``arms`` lists the arms a profile runs (the verdict needs migrated, random_module, no_module).
KD runs until its validation loss plateaus and every KD arm starts from the same place with
``kd_start="zero_proj_out"`` (:mod:`abi.experiments.cross_architecture_arms`). Every correction is
added after the target's final norm (the release's site), recorded as ``parameters.correction_site``.

Data. Shared sentences come from the domain's *train* split; the windows of the domain stages and of
KD (and their disjoint validation windows) from ``train_split``; every reported number from
``eval_split`` (files never used for either). A model shipped as raw chunks (Qwen2.5-Coder) has its
parts and assembled sha256 checked by :func:`validate`, before any training.

The notebook calls :func:`validate`, then :func:`run_setting` per setting (``prepare_setting`` in
``cross_architecture_setup``, ``train_setting`` in ``cross_architecture_arms``, ``evaluate_setting``
and ``setting_block`` in ``cross_architecture_evaluation``; a finished setting is kept on disk and
resumed), then :func:`build_result`. Summaries, contrasts, gates and verdicts are computed from the
stored raw values by ``derive`` (in ``cross_architecture_stats``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from abi.backbones import DEFAULT_CORRECTION_SITE, load_backbone, resolve_backbone
from abi.cache_integrity import atomic_write_json
from abi.checkpoints import load_module
from abi.experiments.common import check_domain, check_held_out_splits, check_protocol_fits
from abi.experiments.cross_architecture_arms import KD_STARTS, domain_rule, kd_config, kd_rule, train_setting
from abi.experiments.cross_architecture_evaluation import evaluate_setting, setting_block
from abi.experiments.cross_architecture_setup import (
    check_model_files,
    module_taps,
    pair_key,
    parse_pair,
    prepare_setting,
    setting_key,
)
from abi.experiments.cross_architecture_stats import ARMS, PUBLISHED, REQUIRED_ARMS, derive
from abi.module_store import code_digest
from abi.nib import get_protocol
from abi.paths import cache_dir
from abi.profiles import register_profiles, resolve_parameters
from abi.results import result_document
from abi.zoo import t5_mini_cost

CLAIM = "cross_architecture"

_CPU: dict[str, Any] = {
    "pairs": ["smollm2-135m -> qwen2.5-coder-0.5b", "smollm2-135m -> gemma3-270m", "t5-mini -> smollm2-135m"],
    "domains": ["python", "python-dialect"],
    # Domain -> the pairs that run in it (a domain not named here runs every pair).
    "pairs_by_domain": {"python": ["smollm2-135m -> gemma3-270m"]},
    "dialect_words": 200,
    "dialect_seed": 0,
    "split_level": "file",
    "source_taps": [],  # empty: the last layer of each model (the release's 1-tap module)
    "target_taps": [],
    "bottleneck": 128,
    "expansion": 4,
    "window_len": 64,  # causal training windows; an encoder-decoder uses the t5-prefix layout
    "train_split": "train",  # windows of the domain stages and of KD, and their validation windows
    "n_train_windows": 128,
    "val_windows": 8,
    "domain_steps": 400,  # the most; the plateau rule stops earlier
    "domain_eval_every": 50,
    "domain_patience": 2,
    "domain_min_delta": 0.005,
    "zero_init_proj_out": True,
    "domain_lr": 1e-3,
    "domain_batch_windows": 2,
    "native_seed": 0,
    "ceiling_seed": 100,
    "seeds": [1, 2, 3],
    "arms": ["migrated", "random_module", "procrustes_only", "no_module", "ceiling"],
    "n_sentences": 256,
    "context_chars": 96,
    "sentence_chars": 96,
    "sentence_seed": 0,
    "kd_start": "zero_proj_out",
    "kd_steps": 120,  # the most (cost: about 1 s a step on a 262k-vocabulary head); the plateau rule may stop earlier
    "kd_eval_every": 20,
    "kd_patience": 2,
    "kd_min_delta": 0.01,
    "kd_lr": 1e-3,
    "kd_positions": 32,
    "kd_temperature": 2.0,
    "kd_weight": 0.9,
    "ce_weight": 0.1,
    "head_dtype": "bfloat16",
    "protocol": "faq",
    "eval_split": "test",
    "eval_windows": 32,
    "eval_window_len": 64,
    "official_arms": [],
    "source_eval_windows": 32,
    "source_modules": [],  # module files to migrate instead of training (one per seed, one pair)
    "ni_margin": 0.02,
    "zoo_probe_steps": 0,
    "bootstrap_resamples": 2000,
    "feature_dtype": "float32",
}

register_profiles(
    CLAIM,
    {
        "cpu": _CPU,
        "smoke": {
            **_CPU,
            "pairs": ["tiny-llama -> tiny-gpt2"],
            "pairs_by_domain": {},
            "bottleneck": 32,
            "n_train_windows": 16,
            "val_windows": 4,
            "domain_steps": 8,
            "domain_eval_every": 4,
            "seeds": [1, 2],
            "arms": list(ARMS),
            "n_sentences": 48,
            "kd_steps": 6,
            "kd_eval_every": 3,
            "kd_positions": 16,
            "eval_windows": 8,
            "source_eval_windows": 4,
            "bootstrap_resamples": 500,
        },
        "paper": {
            **_CPU,
            "pairs": ["t5-large -> gpt2-medium"],
            "pairs_by_domain": {},
            "bottleneck": 256,
            "window_len": 128,
            "n_train_windows": 4000,
            "val_windows": 64,
            "zero_init_proj_out": False,
            "kd_start": "procrustes",
            "domain_steps": 2000,
            "domain_eval_every": 200,
            "domain_lr": 3e-4,
            "arms": list(ARMS),
            "n_sentences": 2000,
            "kd_steps": 1200,
            "kd_eval_every": 100,
            "kd_lr": 5e-4,
            "kd_positions": 256,
            "head_dtype": "float32",
            "eval_windows": 500,
            "eval_window_len": 128,
            "official_arms": list(ARMS),
            "source_eval_windows": 128,
        },
    },
)


# -- parameters --------------------------------------------------------------------------------------
def validate(profile: str, source: str | None = None, target: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Resolve and check every parameter before any long work: pairs (each model's files are checked,
    then it is loaded to check the taps), domains, splits, arms, the KD recipe and stopping rules,
    protocol, the source module files and their architecture.

    Ranges common to every claim (counts, learning rates, seeds) are checked by ``resolve_parameters``.
    """
    params = resolve_parameters(CLAIM, profile, **overrides)
    if (source is None) != (target is None):
        raise ValueError("give both source= and target= (one pair), or neither (the profile's pairs).")
    if source is not None:
        params["pairs"] = [f"{source} -> {target}"]
    pairs = [parse_pair(p) for p in params["pairs"]]
    if not pairs:
        raise ValueError("pairs must list at least one 'SOURCE -> TARGET' pair.")
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"pairs {params['pairs']} contain duplicates.")
    domains = params["domains"]
    if not domains or len(set(domains)) != len(domains):
        raise ValueError(f"domains must be a non-empty list without duplicates, got {domains!r}.")
    for domain in domains:
        check_domain(domain, params["dialect_words"])
    extra = sorted(set(params["pairs_by_domain"]) - set(domains))
    if extra:
        raise ValueError(f"pairs_by_domain names domains {extra} that are not among domains {domains}.")
    for name in {n for pair in pairs for n in pair}:
        resolve_backbone(name)
    if params["n_sentences"] < 2:
        raise ValueError(f"n_sentences must be at least 2 (Procrustes needs paired rows), got {params['n_sentences']}.")
    check_held_out_splits(params)
    _check_arms(params)
    if params["kd_start"] not in KD_STARTS:
        raise ValueError(f"unknown kd_start {params['kd_start']!r}; valid values: {', '.join(KD_STARTS)}.")
    kd_config(params)  # the KD recipe: temperature, head precision
    domain_rule(params), kd_rule(params)
    protocol = get_protocol(params["protocol"])
    if protocol.layout == "causal":
        protocol.with_overrides(window_len=params["eval_window_len"])  # skip must leave scored positions
    for name in dict.fromkeys(n for pair in pairs for n in pair):
        check_model_files(name)  # chunked models: every part and the assembled sha256, before any training
    params["taps"] = {}
    for source_name, target_name in pairs:
        source_backbone, target_backbone = load_backbone(source_name), load_backbone(target_name)
        source_taps = module_taps(params["source_taps"], source_backbone)
        target_taps = module_taps(params["target_taps"], target_backbone)
        if len(source_taps) != len(target_taps):
            raise ValueError(
                f"{len(source_taps)} source taps but {len(target_taps)} target taps; the module reads "
                "as many taps on T as on S."
            )
        check_protocol_fits(target_backbone, protocol)
        params["taps"][pair_key(source_name, target_name)] = {"source": list(source_taps), "target": list(target_taps)}
    _check_source_modules(params, pairs)
    params["settings"] = [setting_key(pair, domain) for domain in domains for pair in _domain_pairs(params, domain)]
    params["correction_site"] = DEFAULT_CORRECTION_SITE
    params["bootstrap"] = {"n_resamples": params["bootstrap_resamples"], "seed": 0}
    return params


def _domain_pairs(params: dict[str, Any], domain: str) -> list[str]:
    """The pairs that run in ``domain``: those ``pairs_by_domain`` lists for it, else every pair.

    The cpu profile shows the weak regime on one pair (it costs as much as a strong one and its gate
    is known to fail on smollm2's Python) and runs every pair in the strong regime.
    """
    chosen = params["pairs_by_domain"].get(domain)
    if chosen is None:
        return list(params["pairs"])
    known = {parse_pair(p): p for p in params["pairs"]}
    unknown = [p for p in chosen if parse_pair(p) not in known]
    if unknown or not chosen:
        raise ValueError(f"pairs_by_domain[{domain!r}] must list some of pairs {params['pairs']}, got {chosen!r}.")
    return [known[parse_pair(p)] for p in chosen]


def _check_arms(params: dict[str, Any]) -> None:
    """Known arms, without duplicates, including the verdict's candidate and floors."""
    arms, official = params["arms"], params["official_arms"]
    unknown = sorted((set(arms) | set(official)) - set(ARMS))
    if unknown:
        raise ValueError(f"arms/official_arms {unknown} are not arms; arms are {list(ARMS)}.")
    if len(set(arms)) != len(arms) or not set(REQUIRED_ARMS) <= set(arms):
        raise ValueError(f"arms must list each arm once and include {list(REQUIRED_ARMS)}; got {arms!r}.")
    if not set(official) <= set(arms):
        raise ValueError(f"official_arms {official!r} must be a subset of arms {arms!r}.")


def _check_source_modules(params: dict[str, Any], pairs: list[tuple[str, str]]) -> None:
    """Module files given instead of training: one pair, one file per seed, each trained on the
    declared source's architecture with the source taps, and without per-tap LayerNorms."""
    files = params["source_modules"]
    if not files:
        return
    if len(pairs) != 1 or len(files) != len(params["seeds"]) or len(params["domains"]) != 1:
        raise ValueError(
            f"source_modules needs exactly one pair, one domain and one file per seed ({len(params['seeds'])}); "
            f"got {len(pairs)} pairs, {len(params['domains'])} domains and {len(files)} files."
        )
    source = load_backbone(pairs[0][0])
    taps = params["taps"][pair_key(*pairs[0])]["source"]
    for path in files:
        module, record = load_module(Path(path), backbone=source, expect_family=source.spec.family)
        if list(record.taps) != taps or module.config.per_tap_norm:
            raise ValueError(
                f"{path}: reads taps {list(record.taps)} (per-tap LayerNorm: "
                f"{module.config.per_tap_norm}); this run migrates 1-tap-style modules on taps {taps} "
                "without per-tap LayerNorm: pass source_taps to match, or another file."
            )


# -- running and the result ---------------------------------------------------------------------------
@dataclass
class SettingRun:
    """One finished setting: its raw record and the resources it used."""

    record: dict[str, Any]
    resources: dict[str, float]


def _library_digest() -> str:
    """sha256 over the code this claim's run imports (:func:`abi.module_store.code_digest`): an edit to a
    report, a figure or another claim keeps a finished setting."""
    return code_digest(__name__)


def _finished_setting_path(params: dict[str, Any], key: str) -> Path:
    """Where a finished setting is kept until the result is written, keyed by the parameters, the
    setting and the code the claim imports."""
    identity = {"params": params, "setting": key, "library": _library_digest()}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return cache_dir() / "runs" / CLAIM / f"{digest}.json"


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers, for JSON."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def run_setting(params: dict[str, Any], key: str, resume: bool = True) -> SettingRun:
    """Prepare, train, evaluate one setting (``"<domain>: S->T"``, see ``params["settings"]``).

    A finished setting is kept on disk, so a run that stops in a later setting resumes after the last
    finished one (same parameters and same code only); ``resume=False`` recomputes it.
    """
    path = _finished_setting_path(params, key)
    if resume and path.is_file():
        try:
            kept = json.loads(path.read_text())
            print(f"{key}: resumed from the finished run kept in {path.parent.name}/{path.name}")
            return SettingRun(kept["record"], kept["resources"])
        except (OSError, ValueError, KeyError) as error:
            print(f"{key}: the kept run {path.name} is unreadable ({error}); running the setting again")
    setup = prepare_setting(params, key)
    arms = train_setting(setup, CLAIM)
    run = SettingRun(setting_block(setup, arms, evaluate_setting(setup, arms)), setup.watch.resources())
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = json.loads(json.dumps({"record": run.record, "resources": run.resources}, default=_plain))
    atomic_write_json(path, kept, indent=None)
    return SettingRun(kept["record"], kept["resources"])


def zoo_facts(params: dict[str, Any]) -> dict[str, Any]:
    """The t5-mini training log's facts when a pair uses it, and, if ``zoo_probe_steps`` > 0, the
    measured CPU rate of the same recipe (``{}`` when no pair uses t5-mini)."""
    if not any("t5-mini" in pair for pair in params["pairs"]):
        return {}
    facts = t5_mini_cost.training_facts()
    if params["zoo_probe_steps"] > 0:
        facts["cpu_probe"] = t5_mini_cost.cpu_probe(params["zoo_probe_steps"])
    return facts


def build_result(params: dict[str, Any], runs: dict[str, SettingRun], zoo: dict[str, Any] | None = None) -> dict:
    """The result file's content: parameters, every setting's raw values, then what is derived."""
    result = result_document(
        CLAIM,
        params,
        timings={key: run.record["timings"] for key, run in runs.items()},
        resources=next(iter(runs.values())).resources,
        published=PUBLISHED,
        zoo=zoo or {},
        settings={key: {k: v for k, v in run.record.items() if k != "timings"} for key, run in runs.items()},
    )
    result.update(derive(result))
    return result
