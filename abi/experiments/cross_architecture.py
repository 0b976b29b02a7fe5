"""Claim 2, cross-architecture migration: a domain module trained on a source model S moves to a
target T of another architecture, tokenizer and vocabulary by recalibrating only its interface.

Per pair ``S -> T`` and training seed, every arm is scored against the *native* T module (trained
on T with the domain stage, its own seed; the KD teacher, as in the original) on the same held-out
T windows:

* ``migrated``: the S module, interface initialised by Procrustes, then KD of proj_in/proj_out
  only, domain part frozen (hash asserted) — the claim;
* ``random_module``: an untrained S module (random domain weights) through the identical
  Procrustes + KD (floor: what the calibration achieves with no domain knowledge to carry);
* ``procrustes_only``: the migrated module before KD (0 KD steps);
* ``random_init_kd``: the S module's domain part with a random interface, then the same KD
  (no Procrustes);
* ``also_trained``: Procrustes, then KD of *every* weight, as the original code did;
* ``no_module``: the bare target (floor);
* ``ceiling``: a second native T module with another seed (seed-noise ceiling; note that it was
  not distilled from the reference, the KD arms were).

Data. Shared sentences come from the code *train* split; the windows of the domain stages and of
KD from ``train_split``; every reported number from ``eval_split`` (files never used for either).
The ``cpu`` profile trains on the *validation* split: t5-mini was pre-trained for about 30 passes
over the train split's code, so its loss there is far below its held-out loss (about 2.3 vs 3.8
nats), and a module trained on those windows learns the backbone's memorised residue; the zoo
recipe used the validation split only to pick its checkpoint. Training windows are spread over
the whole split (seeded), not its first files in path order.

Initialisation. With ``zero_init_proj_out`` (``cpu``, ``smoke``) every module, trained or random,
starts with a zero output projection, i.e. as the bare backbone. With the library's default
(xavier, the ``paper`` profile) an untrained module's correction is as large as t5-mini's whole
final hidden state (held-out perplexity 45 -> 73), and a random module would then be a floor that
first has to undo damage rather than a module without domain knowledge.

The notebook calls :func:`validate`, then :func:`run_pair` per pair (``prepare_pair`` in
``cross_architecture_setup``, ``train_pair`` in ``cross_architecture_arms``, ``evaluate_pair`` and
``pair_block`` in ``cross_architecture_evaluation``), then :func:`build_result` with the t5-mini facts
of :func:`zoo_facts`. Summaries, contrasts
and verdicts are computed from the stored raw per-window values by ``derive`` (in
``cross_architecture_stats``, with the release's published figures and the claim's verdict).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from abi.backbones import load_backbone, resolve_backbone
from abi.checkpoints import load_module
from abi.experiments.common import check_held_out_splits, check_protocol_fits
from abi.experiments.cross_architecture_arms import kd_config, train_pair
from abi.experiments.cross_architecture_evaluation import PairBlock, evaluate_pair, pair_block
from abi.experiments.cross_architecture_setup import module_taps, pair_key, parse_pair, prepare_pair
from abi.experiments.cross_architecture_stats import ARMS, PUBLISHED, derive
from abi.nib import get_protocol
from abi.profiles import register_profiles, resolve_parameters
from abi.results import Stopwatch, result_document
from abi.zoo import t5_mini_cost

CLAIM = "cross_architecture"

_CPU: dict[str, Any] = {
    "pairs": ["t5-mini -> smollm2-135m", "smollm2-135m -> gemma3-270m"],
    "source_taps": [],  # empty: the last layer of each model (the release's 1-tap module)
    "target_taps": [],
    "bottleneck": 128,
    "expansion": 4,
    "window_len": 64,  # causal training windows; an encoder-decoder uses the t5-prefix layout
    "train_split": "validation",  # windows of the domain stages and of KD (see the module docstring)
    "n_train_windows": 128,
    "source_domain_steps": 200,
    "native_domain_steps": 200,
    "zero_init_proj_out": True,
    "domain_lr": 1e-3,
    "domain_batch_windows": 2,
    "native_seed": 0,
    "ceiling_seed": 100,
    "seeds": [1, 2, 3],
    "n_sentences": 384,
    "context_chars": 96,
    "sentence_chars": 96,
    "sentence_seed": 0,
    "kd_steps": 60,
    "kd_lr": 1e-3,
    "kd_positions": 32,
    "kd_temperature": 2.0,
    "kd_weight": 0.9,
    "ce_weight": 0.1,
    "head_dtype": "bfloat16",
    "protocol": "faq",
    "eval_split": "test",
    "eval_windows": 16,
    "eval_window_len": 64,
    "official_arms": ["migrated"],
    "source_eval_windows": 16,
    "source_modules": [],  # module files to migrate instead of training (one per seed, one pair)
    "ni_margin": 0.02,
    "zoo_probe_steps": 3,
    "bootstrap_resamples": 2000,
    "feature_dtype": "float32",
}

register_profiles(
    CLAIM,
    {
        "cpu": _CPU,
        "smoke": {
            **_CPU,
            "pairs": ["tiny-t5 -> tiny-llama", "tiny-llama -> tiny-gpt2"],
            "bottleneck": 32,
            "n_train_windows": 16,
            "source_domain_steps": 8,
            "native_domain_steps": 8,
            "seeds": [1, 2],
            "n_sentences": 48,
            "kd_steps": 6,
            "kd_positions": 16,
            "eval_windows": 8,
            "official_arms": [],
            "source_eval_windows": 4,
            "zoo_probe_steps": 0,
            "bootstrap_resamples": 500,
        },
        "paper": {
            **_CPU,
            "pairs": ["t5-large -> gpt2-medium"],
            "bottleneck": 256,
            "window_len": 128,
            "train_split": "train",
            "n_train_windows": 4000,
            "zero_init_proj_out": False,
            "source_domain_steps": 2000,
            "native_domain_steps": 500,
            "domain_lr": 3e-4,
            "n_sentences": 2000,
            "kd_steps": 1200,
            "kd_lr": 5e-4,
            "kd_positions": 256,
            "head_dtype": "float32",
            "eval_windows": 500,
            "eval_window_len": 128,
            "official_arms": list(ARMS),
            "source_eval_windows": 128,
            "zoo_probe_steps": 0,
        },
    },
)


# -- parameters --------------------------------------------------------------------------------------
def validate(profile: str, source: str | None = None, target: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Resolve and check every parameter before any long work: pairs (each model is loaded to check
    the taps), splits, arms, the KD recipe, protocol, the source module files and their architecture.

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
    for name in {n for pair in pairs for n in pair}:
        resolve_backbone(name)
    if params["n_sentences"] < 2:
        raise ValueError(f"n_sentences must be at least 2 (Procrustes needs paired rows), got {params['n_sentences']}.")
    check_held_out_splits(params)
    unknown = sorted(set(params["official_arms"]) - set(ARMS))
    if unknown:
        raise ValueError(f"official_arms {unknown} are not arms; arms are {list(ARMS)}.")
    kd_config(params)  # the KD recipe: temperature, head precision
    protocol = get_protocol(params["protocol"])
    if protocol.layout == "causal":
        protocol.with_overrides(window_len=params["eval_window_len"])  # skip must leave scored positions
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
    params["bootstrap"] = {"n_resamples": params["bootstrap_resamples"], "seed": 0}
    return params


def _check_source_modules(params: dict[str, Any], pairs: list[tuple[str, str]]) -> None:
    """Module files given instead of training: one pair, one file per seed, each trained on the
    declared source's architecture with the source taps, and without per-tap LayerNorms."""
    files = params["source_modules"]
    if not files:
        return
    if len(pairs) != 1 or len(files) != len(params["seeds"]):
        raise ValueError(
            f"source_modules needs exactly one pair and one file per seed ({len(params['seeds'])}); "
            f"got {len(pairs)} pairs and {len(files)} files."
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
def run_pair(params: dict[str, Any], pair: str) -> tuple[str, PairBlock]:
    """Prepare, train, evaluate one pair; returns its key and ``pair_block``'s output."""
    setup = prepare_pair(params, pair)
    arms = train_pair(setup, CLAIM)
    return setup.key, pair_block(setup, arms, evaluate_pair(setup, arms))


def zoo_facts(params: dict[str, Any]) -> dict[str, Any]:
    """The t5-mini training log's facts when a pair uses it, and, if ``zoo_probe_steps`` > 0, the
    measured CPU rate of the same recipe (``{}`` when no pair uses t5-mini)."""
    if not any("t5-mini" in pair for pair in params["pairs"]):
        return {}
    facts = t5_mini_cost.training_facts()
    if params["zoo_probe_steps"] > 0:
        facts["cpu_probe"] = t5_mini_cost.cpu_probe(params["zoo_probe_steps"])
    return facts


def build_result(
    params: dict[str, Any],
    blocks: list[PairBlock],
    keys: list[str],
    watch: Stopwatch,
    zoo: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The result file's content: one block per pair, raw per-window values, derived sections."""
    comparisons: dict[str, Any] = {}
    official: dict[str, Any] = {}
    pairs: dict[str, Any] = {}
    timings: dict[str, float] = dict(watch.timings)
    for key, (pair_comparisons, pair_official, block) in zip(keys, blocks):
        comparisons.update(pair_comparisons)
        official.update(pair_official)
        pairs[key] = block
        timings.update({f"{key}: {name}": seconds for name, seconds in block["timings"].items()})
    result = result_document(
        CLAIM,
        params,
        timings=timings,
        resources=watch.resources(),
        published=PUBLISHED,
        zoo=zoo or {},
        pair_keys=keys,
        pairs=pairs,
        comparisons=comparisons,
        official=official,
    )
    result.update(derive(result))
    return result
