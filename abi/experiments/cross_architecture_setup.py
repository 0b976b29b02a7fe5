"""Claim 2, pair preparation: both models, their windows and cached features, and the pooled states
of the shared sentences, every size and pairing checked before the long work starts.

Windows of the domain stages and of KD come from ``train_split``, every reported number from
``eval_split``; they are spread over the whole split (seeded), not its first files in path order.
The shared sentences come from the code *train* split and are tokenized by each model's own
tokenizer; two token sets of different text are refused before any feature is extracted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from abi.backbones import Backbone, load_backbone
from abi.data import load_code_corpus, split_corpus
from abi.experiments.common import CorpusStreams, check_protocol_fits, load_streams, make_windows, spread_starts
from abi.features import FeatureSet, Windows, extract_features
from abi.nib import NIBProtocol, get_protocol
from abi.results import Stopwatch
from abi.shared_text import check_paired, draw_shared_text, tokenize_shared
from abi.transfer import pooled_states


def parse_pair(text: str) -> tuple[str, str]:
    """``"S -> T"`` -> ``(S, T)``."""
    parts = [p.strip() for p in str(text).split("->")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"a pair is written 'SOURCE -> TARGET', e.g. 't5-mini -> smollm2-135m'; got {text!r}.")
    if parts[0] == parts[1]:
        raise ValueError(f"pair {text!r}: source and target are the same model; a migration needs two models.")
    return parts[0], parts[1]


def pair_key(source: str, target: str) -> str:
    """The pair's name in the result file: ``S->T``."""
    return f"{source}->{target}"


def module_taps(requested: list[int], backbone: Backbone) -> tuple[int, ...]:
    """The requested taps (checked against the model) or, if none, its last layer."""
    return backbone.check_taps(requested or [backbone.n_layers])


def training_layout(backbone: Backbone, params: dict[str, Any]) -> NIBProtocol:
    """Training windows: t5-prefix layout for an encoder-decoder, causal ``window_len`` otherwise."""
    if backbone.is_encoder_decoder:
        return get_protocol("t5-prefix")
    return get_protocol("faq").with_overrides(window_len=params["window_len"])


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


def spread_windows(
    backbone: Backbone,
    streams: CorpusStreams,
    split: str,
    layout: NIBProtocol,
    n_windows: int,
    window_len: int,
    seed: int,
) -> Windows:
    """Non-overlapping windows spread over the whole split (seeded), not its first files in path order."""
    stream = streams.streams[split]
    span = layout.span if backbone.is_encoder_decoder else window_len
    return make_windows(backbone, stream, spread_starts(len(stream), span, n_windows, seed), layout, window_len)


def prepare_pair(params: dict[str, Any], pair: str) -> PairSetup:
    """Load both models, cut windows (sizes checked before any work), draw and tokenize the shared
    sentences (paired check), cache features and pooled states."""
    watch = Stopwatch()
    source_name, target_name = parse_pair(pair)
    key = pair_key(source_name, target_name)
    with watch.time("load_backbones"):
        source, target = load_backbone(source_name), load_backbone(target_name)
    taps = params["taps"][key]
    source_taps, target_taps = source.check_taps(taps["source"]), target.check_taps(taps["target"])
    protocol = get_protocol(params["protocol"])
    check_protocol_fits(target, protocol)
    source_layout, target_layout = training_layout(source, params), training_layout(target, params)
    eval_layout = (
        protocol.with_overrides(window_len=params["eval_window_len"]) if protocol.layout == "causal" else protocol
    )
    fingerprints = {"source": source.fingerprint(recompute=True), "target": target.fingerprint(recompute=True)}
    with watch.time("tokenize"):
        source_streams, target_streams = load_streams(source), load_streams(target)
        split = split_corpus(load_code_corpus())
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
    train, held_out, seed = params["train_split"], params["eval_split"], protocol.seed
    n_train, window_len = params["n_train_windows"], params["window_len"]
    windows = {
        "source_train": spread_windows(source, source_streams, train, source_layout, n_train, window_len, seed + 1),
        "source_eval": spread_windows(
            source, source_streams, held_out, source_layout, params["source_eval_windows"], window_len, seed
        ),
        "target_train": spread_windows(target, target_streams, train, target_layout, n_train, window_len, seed + 1),
        "target_eval": spread_windows(
            target, target_streams, held_out, eval_layout, params["eval_windows"], params["eval_window_len"], seed
        ),
    }
    if params["official_arms"]:
        stream = target_streams.streams[params["eval_split"]]
        windows["target_official"] = make_windows(
            target, stream, protocol.draw_starts(len(stream)), protocol, protocol.window_len
        )
    features: dict[str, FeatureSet | None] = {"target_official": None}
    with watch.time("extract_features"):
        for name, selected in windows.items():
            backbone, backbone_taps = (source, source_taps) if name.startswith("source") else (target, target_taps)
            features[name] = extract_features(
                backbone, selected, backbone_taps, dtype=params["feature_dtype"], desc=name
            )
    with watch.time("pooled_states"):
        pooled = (pooled_states(source, source_tokens, source_taps), pooled_states(target, target_tokens, target_taps))
    examples = list(zip(text.contexts, text.sentences, text.origin))[:3]
    sentences = {
        "n": len(text),
        "text_sha256": text.sha256,
        "split": "train",
        "source": source_tokens.describe(),
        "target": target_tokens.describe(),
        "examples": [{"context": c, "sentence": s, "origin": o} for c, s, o in examples],
    }
    return PairSetup(
        params=params,
        key=key,
        source=source,
        target=target,
        source_taps=source_taps,
        target_taps=target_taps,
        source_streams=source_streams,
        target_streams=target_streams,
        source_train=features["source_train"],
        source_eval=features["source_eval"],
        target_train=features["target_train"],
        target_eval=features["target_eval"],
        target_official=features["target_official"],
        sentences=sentences,
        pooled=pooled,
        fingerprints_before=fingerprints,
        watch=watch,
    )
