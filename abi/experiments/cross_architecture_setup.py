"""Claim 2, setting preparation: both models, their windows and cached features, and the pooled states
of the shared sentences, every size and pairing checked before the long work starts.

A *setting* is a pair ``S -> T`` in a domain (``python``, or the seeded ``python-dialect`` of
:mod:`abi.dialect`). Windows of the domain stages and of KD come from ``train_split``, with disjoint
validation windows of the same split for the plateau rules; every reported number comes from
``eval_split``. Windows are spread over the whole split (seeded), not its first files in path order.
The shared sentences come from the domain's *train* split (for the dialect: the same dialect text for
both models) and are tokenized by each model's own tokenizer; two token sets of different text are
refused before any feature is extracted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from abi.backbones import Backbone, BackboneUnavailableError, load_backbone, resolve_backbone
from abi.backbones.chunks import join_chunks
from abi.experiments.common import (
    CorpusStreams,
    check_protocol_fits,
    domain_split,
    load_streams,
    make_windows,
    spread_starts,
)
from abi.features import FeatureSet, Windows, extract_features
from abi.nib import NIBProtocol, get_protocol
from abi.paths import cache_dir
from abi.results import Stopwatch
from abi.shared_text import check_paired, draw_shared_text, tokenize_shared
from abi.transfer import pooled_states


def parse_pair(text: str) -> tuple[str, str]:
    """``"S -> T"`` -> ``(S, T)``."""
    parts = [p.strip() for p in str(text).split("->")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"a pair is written 'SOURCE -> TARGET', e.g. 'smollm2-135m -> gemma3-270m'; got {text!r}.")
    if parts[0] == parts[1]:
        raise ValueError(f"pair {text!r}: source and target are the same model; a migration needs two models.")
    return parts[0], parts[1]


def pair_key(source: str, target: str) -> str:
    """The pair's name in the result file: ``S->T``."""
    return f"{source}->{target}"


def setting_key(pair: str, domain: str) -> str:
    """A setting's name in the result file: ``"<domain>: S->T"``."""
    return f"{domain}: {pair_key(*parse_pair(pair))}"


def parse_setting(key: str) -> tuple[str, str, str]:
    """``"<domain>: S->T"`` -> ``(domain, S, T)``."""
    domain, _, pair = key.partition(": ")
    source, _, target = pair.partition("->")
    return domain, source, target


def check_model_files(name: str) -> None:
    """A model shipped as raw chunks (Qwen2.5-Coder): every part installed and the joined file's sha256
    the registered one, checked before any training; the error names the packages and the expected hash.

    Loading alone would not notice once the de-quantized copy is cached, so ``validate`` calls this.
    """
    spec = resolve_backbone(name)
    if not spec.chunks:
        return
    target = cache_dir() / "gguf" / spec.name / spec.gguf_file
    try:
        join_chunks(spec.chunks, spec.gguf_sha256, target)
    except BackboneUnavailableError as error:
        packages = ", ".join(chunk.package for chunk in spec.chunks)
        raise BackboneUnavailableError(
            f"{name}: its GGUF (parts {packages}) cannot be assembled with the expected sha256 "
            f"{spec.gguf_sha256}: {error}"
        ) from error


def module_taps(requested: list[int], backbone: Backbone) -> tuple[int, ...]:
    """The requested taps (checked against the model) or, if none, its last layer."""
    return backbone.check_taps(requested or [backbone.n_layers])


def training_layout(backbone: Backbone, params: dict[str, Any]) -> NIBProtocol:
    """Training windows: t5-prefix layout for an encoder-decoder, causal ``window_len`` otherwise."""
    if backbone.is_encoder_decoder:
        return get_protocol("t5-prefix")
    return get_protocol("faq").with_overrides(window_len=params["window_len"])


def scoring_layout(backbone: Backbone, params: dict[str, Any]) -> tuple[NIBProtocol, int]:
    """Held-out windows and the positions skipped by NIB: the claim's protocol on a decoder-only model
    (``eval_window_len``), the t5-prefix layout on an encoder-decoder (the source side of t5-mini)."""
    if backbone.is_encoder_decoder:
        layout = get_protocol("t5-prefix")
        return layout, layout.skip
    protocol = get_protocol(params["protocol"])
    return protocol.with_overrides(window_len=params["eval_window_len"]), protocol.skip


def disjoint_windows(
    backbone: Backbone,
    stream: np.ndarray,
    layout: NIBProtocol,
    counts: dict[str, int],
    window_len: int,
    seed: int,
) -> dict[str, Windows]:
    """Non-overlapping windows of one split, spread over it (seeded), shared out in ``counts``' order:
    training and validation windows of a split never overlap."""
    span = layout.span if backbone.is_encoder_decoder else window_len
    starts = np.random.default_rng(seed).permutation(spread_starts(len(stream), span, sum(counts.values()), seed))
    out, used = {}, 0
    for name, n in counts.items():
        out[name] = make_windows(backbone, stream, np.sort(starts[used : used + n]), layout, window_len)
        used += n
    return out


@dataclass
class SettingSetup:
    """One setting's models, windows, cached features and pooled states of the shared sentences."""

    params: dict[str, Any]
    key: str
    domain: str
    source: Backbone
    target: Backbone
    source_taps: tuple[int, ...]
    target_taps: tuple[int, ...]
    source_streams: CorpusStreams
    target_streams: CorpusStreams
    features: dict[str, FeatureSet]  # source_train/val/eval, target_train/val/eval[, target_official]
    source_skip: int
    target_skip: int
    sentences: dict[str, Any]
    pooled: tuple[Any, Any]
    fingerprints_before: dict[str, str]
    watch: Stopwatch = field(default_factory=Stopwatch)


def _streams(backbone: Backbone, params: dict[str, Any], domain: str) -> CorpusStreams:
    return load_streams(backbone, params["split_level"], domain, params["dialect_words"], params["dialect_seed"])


def _backbone_windows(backbone: Backbone, streams: CorpusStreams, params: dict[str, Any], side: str) -> dict:
    """Training + validation windows (train_split) and held-out windows (eval_split) of one model."""
    seed = get_protocol(params["protocol"]).seed
    train_layout = training_layout(backbone, params)
    counts = {f"{side}_train": params["n_train_windows"], f"{side}_val": params["val_windows"]}
    windows = disjoint_windows(
        backbone, streams.streams[params["train_split"]], train_layout, counts, params["window_len"], seed + 1
    )
    eval_layout, _ = scoring_layout(backbone, params)
    n_eval = params["source_eval_windows"] if side == "source" else params["eval_windows"]
    windows[f"{side}_eval"] = disjoint_windows(
        backbone, streams.streams[params["eval_split"]], eval_layout, {"eval": n_eval}, params["eval_window_len"], seed
    )["eval"]
    return windows


def prepare_setting(params: dict[str, Any], key: str) -> SettingSetup:
    """Load both models, cut windows (sizes checked before any work), draw and tokenize the shared
    sentences of the setting's domain (paired check), cache features and pooled states."""
    watch = Stopwatch()
    domain, source_name, target_name = parse_setting(key)
    with watch.time("load_backbones"):
        source, target = load_backbone(source_name), load_backbone(target_name)
    taps = params["taps"][pair_key(source_name, target_name)]
    source_taps, target_taps = source.check_taps(taps["source"]), target.check_taps(taps["target"])
    protocol = get_protocol(params["protocol"])
    check_protocol_fits(target, protocol)
    fingerprints = {"source": source.fingerprint(recompute=True), "target": target.fingerprint(recompute=True)}
    with watch.time("tokenize"):
        source_streams, target_streams = _streams(source, params, domain), _streams(target, params, domain)
        _, split = domain_split(params["split_level"], domain, params["dialect_words"], params["dialect_seed"])
        text = draw_shared_text(
            split.train,
            params["n_sentences"],
            params["context_chars"],
            params["sentence_chars"],
            params["sentence_seed"],
        )
        source_tokens = tokenize_shared(text, source.tokenizer, source.name)
        target_tokens = tokenize_shared(text, target.tokenizer, target.name)
    check_paired(source_tokens, target_tokens)
    windows = {
        **_backbone_windows(source, source_streams, params, "source"),
        **_backbone_windows(target, target_streams, params, "target"),
    }
    if params["official_arms"]:
        stream = target_streams.streams[params["eval_split"]]
        windows["target_official"] = make_windows(
            target, stream, protocol.draw_starts(len(stream)), protocol, protocol.window_len
        )
    features: dict[str, FeatureSet] = {}
    with watch.time("extract_features"):
        for name, selected in windows.items():
            backbone, backbone_taps = (source, source_taps) if name.startswith("source") else (target, target_taps)
            features[name] = extract_features(
                backbone, selected, backbone_taps, dtype=params["feature_dtype"], desc=f"{key}: {name}"
            )
    with watch.time("pooled_states"):
        pooled = (pooled_states(source, source_tokens, source_taps), pooled_states(target, target_tokens, target_taps))
    examples = list(zip(text.contexts, text.sentences, text.origin))[:3]
    sentences = {
        "n": len(text),
        "text_sha256": text.sha256,
        "split": "train",
        "domain": domain,
        "source": source_tokens.describe(),
        "target": target_tokens.describe(),
        "examples": [{"context": c, "sentence": s, "origin": o} for c, s, o in examples],
    }
    return SettingSetup(
        params=params,
        key=key,
        domain=domain,
        source=source,
        target=target,
        source_taps=source_taps,
        target_taps=target_taps,
        source_streams=source_streams,
        target_streams=target_streams,
        features=features,
        source_skip=scoring_layout(source, params)[1],
        target_skip=scoring_layout(target, params)[1],
        sentences=sentences,
        pooled=pooled,
        fingerprints_before=fingerprints,
        watch=watch,
    )
