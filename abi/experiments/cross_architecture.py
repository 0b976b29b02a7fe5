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

The notebook calls :func:`validate`, then per pair :func:`prepare_pair`, :func:`train_pair`,
:func:`evaluate_pair`, then :func:`build_result`. Summaries, contrasts and verdicts are computed
from the stored raw per-window values by :func:`derive` (in ``cross_architecture_stats``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from abi.backbones import Backbone, load_backbone, resolve_backbone
from abi.checkpoints import load_module, save_module
from abi.data import load_code_corpus, split_corpus
from abi.evaluate import VariantScores, score_variants
from abi.experiments.common import (
    CorpusStreams,
    check_protocol_fits,
    load_streams,
    make_windows,
    spread_starts,
)
from abi.experiments.cross_architecture_stats import ARMS, derive
from abi.features import FeatureSet, extract_features
from abi.module import ABIModule, ModuleConfig, count_parameters, parameter_hash
from abi.nib import NIBProtocol, get_protocol
from abi.paths import cache_dir
from abi.profiles import register_profiles, resolve_parameters
from abi.results import Stopwatch, derive_comparison, provenance, register_deriver
from abi.train import module_corrections, train_domain_stage
from abi.transfer import (
    KDConfig,
    check_paired,
    draw_shared_text,
    fit_interface_maps,
    head_precision,
    kd_calibrate,
    migrate_module,
    pooled_states,
    tokenize_shared,
)

CLAIM = "cross_architecture"
PUBLISHED = {
    "setting": "T5-large -> GPT-2-medium (both d=1024); 1 tap, bottleneck 256; Procrustes on 2,000 shared "
    "sentences; 1,200 KD steps (0.9 KL at T=2 + 0.1 CE); anchor: a native GPT-2-medium module (500 steps)",
    "official": {"top5": 0.8699, "top1": 0.9252, "js": 0.01787, "entropy_diff": 0.2819},
    "cross_family": {"pair": "GPT-2-small -> Qwen2.5-0.5B", "top5": 0.8701},
}

_CPU: dict[str, Any] = {
    "pairs": ["t5-mini -> smollm2-135m", "smollm2-135m -> gemma3-270m"],
    "source_taps": [],  # empty: the last layer of each model (the seed's 1-tap module)
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
def parse_pair(text: str) -> tuple[str, str]:
    """``"S -> T"`` -> ``(S, T)``."""
    parts = [p.strip() for p in str(text).split("->")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"a pair is written 'SOURCE -> TARGET', e.g. 't5-mini -> smollm2-135m'; got {text!r}.")
    if parts[0] == parts[1]:
        raise ValueError(f"pair {text!r}: source and target are the same model; a migration needs two models.")
    return parts[0], parts[1]


def pair_key(source: str, target: str) -> str:
    return f"{source}->{target}"


def module_taps(requested: list[int], backbone: Backbone) -> tuple[int, ...]:
    """The requested taps (checked against the model) or, if none, its last layer."""
    return backbone.check_taps(requested or [backbone.n_layers])


def _window_protocol(backbone: Backbone, params: dict[str, Any]) -> NIBProtocol:
    """Training windows: t5-prefix layout for an encoder-decoder, causal ``window_len`` otherwise."""
    if backbone.is_encoder_decoder:
        return get_protocol("t5-prefix")
    return get_protocol("faq").with_overrides(window_len=params["window_len"])


def validate(profile: str, source: str | None = None, target: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Resolve and check every parameter before any long work: pairs (each model is loaded to check
    the taps), step counts, protocol, the source module files and their architecture."""
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
    if params["kd_steps"] < 1:
        raise ValueError(f"kd_steps={params['kd_steps']}: a KD calibration needs at least 1 step. The 0-step "
                         "condition is already an arm of its own (procrustes_only).")
    for name in ("bottleneck", "expansion", "n_train_windows", "source_domain_steps", "native_domain_steps",
                 "domain_batch_windows", "kd_positions", "eval_windows", "source_eval_windows"):
        if params[name] < 1:
            raise ValueError(f"{name} must be at least 1, got {params[name]}.")
    if params["n_sentences"] < 2:
        raise ValueError(f"n_sentences must be at least 2 (Procrustes needs paired rows), got {params['n_sentences']}.")
    seeds = params["seeds"]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must list distinct training seeds, got {seeds}.")
    if params["eval_split"] not in ("test", "validation"):
        raise ValueError(f"eval_split must be 'test' or 'validation' (held out), got {params['eval_split']!r}.")
    if params["train_split"] not in ("train", "validation") or params["train_split"] == params["eval_split"]:
        raise ValueError(f"train_split must be 'train' or 'validation' and differ from eval_split "
                         f"({params['eval_split']!r}), got {params['train_split']!r}.")
    unknown = sorted(set(params["official_arms"]) - set(ARMS))
    if unknown:
        raise ValueError(f"official_arms {unknown} are not arms; arms are {list(ARMS)}.")
    head_precision(params["head_dtype"])
    KDConfig(steps=params["kd_steps"], lr=params["kd_lr"], positions=params["kd_positions"],
             temperature=params["kd_temperature"], kl_weight=params["kd_weight"], ce_weight=params["ce_weight"])
    protocol = get_protocol(params["protocol"])
    if protocol.layout == "causal":
        protocol.with_overrides(window_len=params["eval_window_len"])  # skip must leave scored positions
    params["taps"] = {}
    for s_name, t_name in pairs:
        s_bb, t_bb = load_backbone(s_name), load_backbone(t_name)
        s_taps, t_taps = module_taps(params["source_taps"], s_bb), module_taps(params["target_taps"], t_bb)
        if len(s_taps) != len(t_taps):
            raise ValueError(f"{len(s_taps)} source taps but {len(t_taps)} target taps; the module reads as "
                             "many taps on T as on S.")
        check_protocol_fits(t_bb, protocol)
        params["taps"][pair_key(s_name, t_name)] = {"source": list(s_taps), "target": list(t_taps)}
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
        raise ValueError(f"source_modules needs exactly one pair and one file per seed ({len(params['seeds'])}); "
                         f"got {len(pairs)} pairs and {len(files)} files.")
    source = load_backbone(pairs[0][0])
    taps = params["taps"][pair_key(*pairs[0])]["source"]
    for path in files:
        module, record = load_module(Path(path), backbone=source, expect_family=source.spec.family)
        if list(record.taps) != taps or module.config.per_tap_norm:
            raise ValueError(f"{path}: reads taps {list(record.taps)} (per-tap LayerNorm: "
                             f"{module.config.per_tap_norm}); this run migrates 1-tap-style modules on taps {taps} "
                             "without per-tap LayerNorm: pass source_taps to match, or another file.")


# -- set-up -------------------------------------------------------------------------------------------
@dataclass
class PairSetup:
    """One pair's models, windows, cached features and pooled states of the shared sentences."""

    params: dict[str, Any]
    key: str
    source: Backbone
    target: Backbone
    source_taps: tuple[int, ...]
    target_taps: tuple[int, ...]
    source_streams: CorpusStreams
    target_streams: CorpusStreams
    source_train: FeatureSet
    source_eval: FeatureSet
    target_train: FeatureSet
    target_eval: FeatureSet
    target_official: FeatureSet | None
    sentences: dict[str, Any]
    pooled: tuple[Any, Any]
    fingerprints_before: dict[str, str]
    watch: Stopwatch = field(default_factory=Stopwatch)


def _windows(backbone: Backbone, streams: CorpusStreams, split: str, protocol: NIBProtocol, n_windows: int,
             window_len: int, seed: int):
    """Non-overlapping windows spread over the whole split (seeded), not its first files in path order."""
    stream = streams.streams[split]
    span = protocol.span if backbone.is_encoder_decoder else window_len
    return make_windows(backbone, stream, spread_starts(len(stream), span, n_windows, seed), protocol, window_len)


def prepare_pair(params: dict[str, Any], pair: str) -> PairSetup:
    """Load both models, cut windows (sizes checked before any work), draw and tokenize the shared
    sentences (paired check), cache features and pooled states."""
    watch = Stopwatch()
    s_name, t_name = parse_pair(pair)
    key = pair_key(s_name, t_name)
    with watch.time("load_backbones"):
        source, target = load_backbone(s_name), load_backbone(t_name)
    taps = params["taps"][key]
    s_taps, t_taps = source.check_taps(taps["source"]), target.check_taps(taps["target"])
    protocol = get_protocol(params["protocol"])
    check_protocol_fits(target, protocol)
    s_proto, t_proto = _window_protocol(source, params), _window_protocol(target, params)
    eval_proto = protocol.with_overrides(window_len=params["eval_window_len"]) if protocol.layout == "causal" \
        else protocol
    fingerprints = {"source": source.fingerprint(recompute=True), "target": target.fingerprint(recompute=True)}
    with watch.time("tokenize"):
        s_streams, t_streams = load_streams(source), load_streams(target)
        split = split_corpus(load_code_corpus())
        text = draw_shared_text(split.train, params["n_sentences"], params["context_chars"],
                                params["sentence_chars"], params["sentence_seed"])
        s_tok = tokenize_shared(text, source.tokenizer, source.name)
        t_tok = tokenize_shared(text, target.tokenizer, target.name)
    check_paired(s_tok, t_tok)
    train, held_out, seed = params["train_split"], params["eval_split"], protocol.seed
    n_train = params["n_train_windows"]
    windows = {
        "source_train": _windows(source, s_streams, train, s_proto, n_train, params["window_len"], seed + 1),
        "source_eval": _windows(source, s_streams, held_out, s_proto, params["source_eval_windows"],
                                params["window_len"], seed),
        "target_train": _windows(target, t_streams, train, t_proto, n_train, params["window_len"], seed + 1),
        "target_eval": _windows(target, t_streams, held_out, eval_proto, params["eval_windows"],
                                params["eval_window_len"], seed),
    }
    if params["official_arms"]:
        stream = t_streams.streams[params["eval_split"]]
        windows["target_official"] = make_windows(target, stream, protocol.draw_starts(len(stream)), protocol,
                                                  protocol.window_len)
    features: dict[str, FeatureSet | None] = {"target_official": None}
    with watch.time("extract_features"):
        for name, win in windows.items():
            bb, tp = (source, s_taps) if name.startswith("source") else (target, t_taps)
            features[name] = extract_features(bb, win, tp, dtype=params["feature_dtype"], desc=name)
    with watch.time("pooled_states"):
        pooled = (pooled_states(source, s_tok, s_taps), pooled_states(target, t_tok, t_taps))
    sentences = {"n": len(text), "text_sha256": text.sha256, "split": "train", "source": s_tok.describe(),
                 "target": t_tok.describe(), "examples": [{"context": c, "sentence": s, "origin": o} for c, s, o in
                                                           list(zip(text.contexts, text.sentences, text.origin))[:3]]}
    return PairSetup(params, key, source, target, s_taps, t_taps, s_streams, t_streams, features["source_train"],
                     features["source_eval"], features["target_train"], features["target_eval"],
                     features["target_official"], sentences, pooled, fingerprints, watch)


# -- training -----------------------------------------------------------------------------------------
@dataclass
class PairArms:
    """Every trained module of one pair and the training records."""

    reference: ABIModule
    ceiling: ABIModule
    sources: dict[int, ABIModule]
    arms: dict[str, ABIModule]  # "arm/seed" -> module on T
    records: dict[str, Any]


def new_module(params: dict[str, Any], d_model: int, n_taps: int, seed: int) -> ABIModule:
    """An untrained module as every module of this claim starts: 1-tap style (no per-tap LayerNorm);
    with ``zero_init_proj_out`` its output projection starts at zero, so it starts as the bare backbone."""
    module = ABIModule(ModuleConfig(d_model, n_taps, params["bottleneck"], params["expansion"], per_tap_norm=False),
                       seed=seed)
    if params["zero_init_proj_out"]:
        torch.nn.init.zeros_(module.proj_out.weight)
    return module


def _domain_module(setup: PairSetup, backbone: Backbone, features: FeatureSet, taps: tuple[int, ...], steps: int,
                   seed: int, label: str) -> tuple[ABIModule, list[float]]:
    p = setup.params
    module = new_module(p, backbone.d_model, len(taps), seed)
    log = train_domain_stage(module, backbone, features, steps, lr=p["domain_lr"],
                             batch_windows=p["domain_batch_windows"], seed=seed, desc=f"domain stage: {label}",
                             head_dtype=head_precision(p["head_dtype"]))
    module.requires_grad_(False)
    return module, log.losses


def _module_path(setup: PairSetup, seed: int) -> Path:
    p = setup.params
    recipe = {k: p[k] for k in ("bottleneck", "expansion", "window_len", "train_split", "n_train_windows",
                                "source_domain_steps", "domain_lr", "domain_batch_windows", "head_dtype",
                                "zero_init_proj_out")}
    digest = hashlib.sha256(json.dumps({"recipe": recipe, "taps": list(setup.source_taps), "seed": seed,
                                        "backbone": setup.fingerprints_before["source"]}).encode()).hexdigest()[:12]
    return cache_dir() / "modules" / CLAIM / f"{setup.source.name.replace('/', '_')}-seed{seed}-{digest}.safetensors"


def _source_modules(setup: PairSetup, records: dict[str, Any]) -> dict[int, ABIModule]:
    """Train (or read) one source module per seed; every module goes through a module file and is read
    back with the declared source architecture checked (``expect_family``)."""
    p, family = setup.params, setup.source.spec.family
    sources = {}
    for i, seed in enumerate(p["seeds"]):
        if p["source_modules"]:
            path = Path(p["source_modules"][i])
        else:
            module, losses = _domain_module(setup, setup.source, setup.source_train, setup.source_taps,
                                            p["source_domain_steps"], seed, f"source {setup.source.name} {seed}")
            records["domain"][f"source/{seed}"] = losses
            path = save_module(_module_path(setup, seed), module, setup.source_taps, setup.source,
                               extra={"claim": CLAIM, "role": "source", "seed": seed})
        module, record = load_module(path, backbone=setup.source, expect_family=family)
        module.requires_grad_(False)
        records["source_files"][str(seed)] = {"path": str(path), "parameter_sha256": record.parameter_sha256,
                                              "domain_sha256": parameter_hash(module.domain_parameters())}
        sources[seed] = module
    return sources


def train_pair(setup: PairSetup) -> PairArms:
    """Source modules, native target modules, Procrustes maps, then every arm's calibration."""
    p, watch, d_t = setup.params, setup.watch, setup.target.d_model
    records: dict[str, Any] = {"domain": {}, "kd": {}, "source_files": {}, "domain_hash": {}}
    with watch.time("source_domain_stages"):
        sources = _source_modules(setup, records)
    with watch.time("native_domain_stages"):
        reference, records["domain"]["reference"] = _domain_module(
            setup, setup.target, setup.target_train, setup.target_taps, p["native_domain_steps"], p["native_seed"],
            f"native {setup.target.name} (reference)")
        ceiling, records["domain"]["ceiling"] = _domain_module(
            setup, setup.target, setup.target_train, setup.target_taps, p["native_domain_steps"], p["ceiling_seed"],
            f"native {setup.target.name} (ceiling)")
    maps = fit_interface_maps(*setup.pooled)
    records["procrustes"] = maps.describe()
    teacher = module_corrections(reference, setup.target_train)
    arms: dict[str, ABIModule] = {}
    with watch.time("kd_calibration"):
        for seed in p["seeds"]:
            source = sources[seed]
            untrained = new_module(p, source.config.d_model, source.config.n_taps, 10_000 + seed)
            random_interface = migrate_module(source, d_t, None, seed=20_000 + seed)
            if p["zero_init_proj_out"]:
                torch.nn.init.zeros_(random_interface.proj_out.weight)
            arms[f"procrustes_only/{seed}"] = migrate_module(source, d_t, maps)
            starts = {
                "migrated": (migrate_module(source, d_t, maps), "interface"),
                "random_module": (migrate_module(untrained, d_t, maps), "interface"),
                "random_init_kd": (random_interface, "interface"),
                "also_trained": (migrate_module(source, d_t, maps), "all"),
            }
            for arm, (module, train) in starts.items():
                config = KDConfig(steps=p["kd_steps"], lr=p["kd_lr"], positions=p["kd_positions"],
                                  temperature=p["kd_temperature"], kl_weight=p["kd_weight"],
                                  ce_weight=p["ce_weight"], head_dtype=p["head_dtype"], train=train)
                log = kd_calibrate(module, teacher, setup.target, setup.target_train, config, seed=seed,
                                   desc=f"KD {arm} {seed}")
                records["kd"][f"{arm}/{seed}"] = log.to_dict()
                arms[f"{arm}/{seed}"] = module
            for arm in ("migrated", "procrustes_only", "random_init_kd", "also_trained"):
                records["domain_hash"][f"{arm}/{seed}"] = (
                    parameter_hash(arms[f"{arm}/{seed}"].domain_parameters())
                    == records["source_files"][str(seed)]["domain_sha256"])
            if not all(records["domain_hash"][f"{arm}/{seed}"] for arm in ("migrated", "procrustes_only",
                                                                            "random_init_kd")):
                raise RuntimeError(f"seed {seed}: a frozen domain part differs from its source module's.")
    records["module_parameters"] = {"migrated": count_parameters(arms[f"migrated/{p['seeds'][0]}"]),
                                    "interface": sum(t.numel() for t in reference.interface_parameters())}
    records["correction_rms"] = correction_sizes(setup.target_train, {"reference": reference, "ceiling": ceiling,
                                                                      **arms})
    return PairArms(reference, ceiling, sources, arms, records)


@torch.no_grad()
def correction_sizes(features: FeatureSet, modules: dict[str, ABIModule]) -> dict[str, float]:
    """Root-mean-square length of each module's correction over the cached positions (and of the
    final hidden state itself, ``final``): shows whether an initialisation writes corrections of
    the native module's size or far larger ones."""
    sums = dict.fromkeys(["final", *modules], 0.0)
    count = 0
    for _, taps, final, _ in features.iter_batches(16):
        sums["final"] += float(final.pow(2).sum(-1).sum())
        for name, module in modules.items():
            sums[name] += float(module(taps).pow(2).sum(-1).sum())
        count += final.shape[0] * final.shape[1]
    return {name: (total / count) ** 0.5 for name, total in sums.items()}


# -- evaluation ---------------------------------------------------------------------------------------
def arm_variants(arms: PairArms, names: list[str] | tuple[str, ...] = ARMS) -> dict[str, torch.nn.Module | None]:
    """Scored variants by name (``arm/seed`` for seeded arms), in the order of ``ARMS``."""
    variants: dict[str, torch.nn.Module | None] = {}
    for arm in names:
        if arm == "no_module":
            variants[arm] = None
        elif arm == "ceiling":
            variants[arm] = arms.ceiling
        else:
            variants.update({k: m for k, m in arms.arms.items() if k.split("/")[0] == arm})
    return variants


def _batch_windows(backbone: Backbone, features: FeatureSet, logit_elements: int = 2**26) -> int:
    """Windows per scoring batch so that one batch's logits stay near 256 MiB (float32): two of them
    (reference and variant) live at once, and Gemma's 512-token windows are 134M logits each."""
    return max(1, min(8, logit_elements // (features.windows.seq_len * backbone.vocab_size)))


def evaluate_pair(setup: PairSetup, arms: PairArms) -> dict[str, Any]:
    """Held-out NIB of every arm vs the native reference; the official protocol for ``official_arms``;
    the source modules' perplexity on held-out S windows (did they learn the domain on S?)."""
    p = setup.params
    skip = get_protocol(p["protocol"]).skip
    with setup.watch.time("evaluation"):
        scored = {"held_out": score_variants(setup.target, setup.target_eval, arms.reference, arm_variants(arms),
                                             skip, _batch_windows(setup.target, setup.target_eval),
                                             desc=f"{setup.key} held-out")}
        if setup.target_official is not None:
            scored["official"] = score_variants(setup.target, setup.target_official, arms.reference,
                                                arm_variants(arms, p["official_arms"]), skip,
                                                _batch_windows(setup.target, setup.target_official),
                                                desc=f"{setup.key} official")
        source_variants = {f"module/{s}": m for s, m in arms.sources.items()}
        scored["source"] = score_variants(setup.source, setup.source_eval, None, source_variants, 0,
                                          _batch_windows(setup.source, setup.source_eval),
                                          desc=f"{setup.key} source")
    return scored


# -- result -------------------------------------------------------------------------------------------
def _nll(scores: VariantScores) -> dict[str, list]:
    return {"sum": list(scores.nll_sum), "n_tokens": list(scores.n_tokens)}


def _comparison(scores: VariantScores, bootstrap: dict[str, int]) -> dict[str, Any]:
    per_window = {k: list(v) for k, v in scores.per_window.items()}
    nll = _nll(scores)
    return {"reference": "native target module", "per_window": per_window, "nll": nll,
            **derive_comparison(per_window, nll, bootstrap)}


def pair_block(setup: PairSetup, arms: PairArms, scored: dict[str, Any]) -> tuple[dict, dict, dict]:
    """``(comparisons, official, block)`` of one pair, comparisons keyed ``pair/arm[/seed]``."""
    p = setup.params
    after = {"source": setup.source.fingerprint(recompute=True), "target": setup.target.fingerprint(recompute=True)}
    if after != setup.fingerprints_before:
        raise RuntimeError(f"{setup.key}: a backbone's weights changed during the run; the run is invalid.")
    ref_held, held = scored["held_out"]
    comparisons = {f"{setup.key}/{name}": _comparison(s, p["bootstrap"]) for name, s in held.items()}
    official = {}
    if "official" in scored:
        official = {f"{setup.key}/{name}": _comparison(s, p["bootstrap"]) for name, s in scored["official"][1].items()}
    source_bare, source_modules = scored["source"]
    block = {
        "source": {**setup.source.describe(), "taps": list(setup.source_taps),
                   "fingerprint_before": setup.fingerprints_before["source"], "fingerprint_after": after["source"],
                   "data": setup.source_streams.identity},
        "target": {**setup.target.describe(), "taps": list(setup.target_taps),
                   "fingerprint_before": setup.fingerprints_before["target"], "fingerprint_after": after["target"],
                   "data": setup.target_streams.identity},
        "sentences": setup.sentences,
        "reference_nll": _nll(ref_held),
        "source_nll": {"bare": _nll(source_bare), **{k: _nll(v) for k, v in source_modules.items()}},
        "training": arms.records,
        "timings": setup.watch.timings,
    }
    return comparisons, official, block


def build_result(params: dict[str, Any], blocks: list[tuple[dict, dict, dict]], keys: list[str],
                 watch: Stopwatch, zoo: dict[str, Any] | None = None) -> dict[str, Any]:
    """The result file's content: one block per pair, raw per-window values, derived sections."""
    comparisons: dict[str, Any] = {}
    official: dict[str, Any] = {}
    pairs: dict[str, Any] = {}
    timings: dict[str, float] = dict(watch.timings)
    for key, (cmp, off, block) in zip(keys, blocks):
        comparisons.update(cmp)
        official.update(off)
        pairs[key] = block
        timings.update({f"{key}: {name}": seconds for name, seconds in block["timings"].items()})
    result = {
        "schema_version": 1,
        "claim": CLAIM,
        "profile": params["profile"],
        "parameters": params,
        "provenance": provenance(),
        "timings": timings,
        "resources": watch.resources(),
        "published": PUBLISHED,
        "zoo": zoo or {},
        "pair_keys": keys,
        "pairs": pairs,
        "comparisons": comparisons,
        "official": official,
    }
    result.update(derive(result))
    return result


register_deriver(CLAIM, derive)


def run_pair(params: dict[str, Any], pair: str) -> tuple[str, tuple[dict, dict, dict]]:
    """prepare, train, evaluate one pair; returns its key and :func:`pair_block`'s output."""
    setup = prepare_pair(params, pair)
    arms = train_pair(setup)
    return setup.key, pair_block(setup, arms, evaluate_pair(setup, arms))
