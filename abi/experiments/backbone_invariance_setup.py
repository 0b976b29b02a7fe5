"""Claim 4, set-up of one backbone B: its parameters, code and prose windows, and B's cached features.

Module training windows are spread over the whole code train split (seeded, non-overlapping):
windows tiled from its start cover only the first packages in path order, and a module trained on
them does not improve held-out code at all. The update trains on prose windows tiled over
``finetune_split``; every reported number comes from held-out code and the prose test split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from abi.backbones import Backbone, load_backbone
from abi.experiments.common import CorpusStreams, load_streams, make_windows, spread_starts
from abi.features import FeatureSet, Windows, extract_features
from abi.finetune import ProseStreams, load_prose_streams
from abi.nib import NIBProtocol, get_protocol
from abi.results import Stopwatch


def params_for(params: dict[str, Any], name: str) -> dict[str, Any]:
    """The parameters one backbone runs with: the claim's, with that backbone's overrides applied."""
    return {**params, **params["backbone_overrides"].get(name, {})}


def window_protocol(backbone: Backbone, window_len: int) -> NIBProtocol:
    """Window layout: causal chunks (``faq`` scoring rules), or for T5 the ``t5-prefix`` layout
    with half the window as encoder prefix and half as decoder continuation (64 + 64 at 128)."""
    if backbone.is_encoder_decoder:
        half = window_len // 2
        return get_protocol("t5-prefix").with_overrides(prefix_len=half, cont_len=window_len - half)
    return get_protocol("faq").with_overrides(window_len=window_len)


@dataclass
class Setup:
    """One backbone's data, windows and cached features on B."""

    params: dict[str, Any]
    backbone: Backbone
    taps: tuple[int, ...]
    protocol: NIBProtocol
    code: CorpusStreams
    prose: ProseStreams
    code_train: Windows
    code_eval: Windows
    prose_train: Windows
    prose_eval: Windows
    train: FeatureSet
    held_out: FeatureSet
    fingerprint_before: str
    watch: Stopwatch = field(default_factory=Stopwatch)


def prepare(params: dict[str, Any], name: str) -> Setup:
    """Load B, cut code and prose windows (checked for size before any work), cache B's features."""
    params = params_for(params, name)
    watch = Stopwatch()
    with watch.time("load_backbone"):
        backbone = load_backbone(name)
    taps = backbone.check_taps(params["module_taps"][name])
    protocol = window_protocol(backbone, params["window_len"])
    fingerprint_before = backbone.fingerprint(recompute=True)
    with watch.time("tokenize"):
        code = load_streams(backbone)
        prose = load_prose_streams(backbone)
    span, window_len = protocol.span, params["window_len"]

    def spread(stream: np.ndarray, n_windows: int, seed: int) -> Windows:
        return make_windows(backbone, stream, spread_starts(len(stream), span, n_windows, seed), protocol, window_len)

    code_eval = spread(code.streams[params["eval_split"]], params["eval_windows"], protocol.seed)
    code_train = spread(code.streams[params["train_split"]], params["n_train_windows"], protocol.seed + 1)
    prose_stream = prose.streams[params["finetune_split"]]
    prose_train = make_windows(
        backbone, prose_stream, np.arange(len(prose_stream) // span) * span, protocol, window_len
    )
    prose_eval = spread(prose.streams["test"], params["prose_eval_windows"], protocol.seed)
    with watch.time("extract_features"):
        train = extract_features(backbone, code_train, taps, dtype=params["feature_dtype"], desc="train")
        held_out = extract_features(backbone, code_eval, taps, dtype=params["feature_dtype"], desc="held_out")
    return Setup(
        params=params,
        backbone=backbone,
        taps=taps,
        protocol=protocol,
        code=code,
        prose=prose,
        code_train=code_train,
        code_eval=code_eval,
        prose_train=prose_train,
        prose_eval=prose_eval,
        train=train,
        held_out=held_out,
        fingerprint_before=fingerprint_before,
        watch=watch,
    )
