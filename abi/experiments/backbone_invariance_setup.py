"""Claim 4, set-up: what every setting shares (the backbone B at the release's correction site, prose
windows, B's prose NLL, the plain updates) and what one setting prepares (its domain's code windows
and B's cached features).

The plain update is a prose fine-tune: it does not depend on the domain, so its updated backbones are
made once (and cached on disk by :mod:`abi.finetune`) and shared by every setting. Module training
windows are spread over the whole code train split (seeded, non-overlapping); every reported number
comes from held-out code windows and the prose test split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from abi.backbones import Backbone, load_backbone
from abi.experiments.common import CorpusStreams, load_streams, make_windows, parse_setting, spread_starts
from abi.features import FeatureSet, Windows, extract_features
from abi.finetune import FinetuneConfig, FinetuneRun, ProseStreams, finetune_backbone, load_prose_streams, window_nll
from abi.nib import NIBProtocol, get_protocol
from abi.results import Stopwatch


def window_protocol(backbone: Backbone, window_len: int) -> NIBProtocol:
    """Window layout: causal chunks (``faq`` scoring rules), or for T5 the ``t5-prefix`` layout
    with half the window as encoder prefix and half as decoder continuation (64 + 64 at 128)."""
    if backbone.is_encoder_decoder:
        half = window_len // 2
        return get_protocol("t5-prefix").with_overrides(prefix_len=half, cont_len=window_len - half)
    return get_protocol("faq").with_overrides(window_len=window_len)


def module_taps(params: dict[str, Any], backbone: Backbone) -> tuple[int, ...]:
    """The explicit ``taps`` (checked against the model), else its last ``n_taps`` layers."""
    if params["taps"]:
        return backbone.check_taps(params["taps"])
    n_taps = min(params["n_taps"], backbone.n_layers)
    return backbone.check_taps(range(backbone.n_layers - n_taps + 1, backbone.n_layers + 1))


def finetune_config(
    params: dict[str, Any], arm: str, seed: int, taps: tuple[int, ...], module_sha: str = ""
) -> FinetuneConfig:
    """The update's settings; the protected arm adds the release's stability term on the module's hidden state."""
    protected = arm == "protected"
    return FinetuneConfig(
        steps=params["finetune_steps"],
        lr=params["finetune_lr"],
        batch_windows=params["finetune_batch_windows"],
        weight_decay=params["finetune_weight_decay"],
        warmup_steps=params["finetune_warmup_steps"],
        seed=seed,
        protect_weight=params["protect_weight"] if protected else 0.0,
        protect_taps=taps if protected else (),
        protect_target="module",
        protect_module_sha256=module_sha if protected else "",
    )


@dataclass
class Shared:
    """What every setting shares: B, its taps and window layout, prose windows and NLL, the plain updates."""

    params: dict[str, Any]
    backbone: Backbone
    taps: tuple[int, ...]
    protocol: NIBProtocol
    prose: ProseStreams
    prose_train: Windows
    prose_eval: Windows
    prose_nll: dict[str, list[float]]
    prose_tokens: list[int]
    plain: dict[int, FinetuneRun]
    fingerprint_before: str
    watch: Stopwatch = field(default_factory=Stopwatch)


def prepare_shared(params: dict[str, Any]) -> Shared:
    """Load B at the release's correction site, cut prose windows, run (or load) the plain updates."""
    watch = Stopwatch()
    with watch.time("load_backbone"):
        backbone = load_backbone(params["backbone"])  # the release's correction site, after the final norm
    taps = module_taps(params, backbone)
    protocol = window_protocol(backbone, params["window_len"])
    fingerprint_before = backbone.fingerprint(recompute=True)
    with watch.time("tokenize_prose"):
        prose = load_prose_streams(backbone)
    span = protocol.span
    stream = prose.streams[params["finetune_split"]]
    prose_train = make_windows(backbone, stream, np.arange(len(stream) // span) * span, protocol, params["window_len"])
    test = prose.streams["test"]
    prose_eval = make_windows(
        backbone,
        test,
        spread_starts(len(test), span, params["prose_eval_windows"], protocol.seed),
        protocol,
        params["window_len"],
    )
    with watch.time("prose_perplexity"):
        nll, tokens = window_nll(backbone, prose_eval, desc="prose before the update")
    prose_nll, plain = {"B": nll}, {}
    for seed in params["update_seeds"]:
        with watch.time("plain/finetune"):
            plain[seed] = finetune_backbone(
                backbone,
                prose_train,
                finetune_config(params, "plain", seed, taps),
                data=prose.identity,
                checkpoint_every=params["checkpoint_every"],
                desc=f"plain update, seed {seed}",
            )
        with watch.time("prose_perplexity"):
            prose_nll[f"plain/{seed}"], _ = window_nll(
                plain[seed].backbone, prose_eval, desc=f"prose after update {seed}"
            )
    return Shared(
        params=params,
        backbone=backbone,
        taps=taps,
        protocol=protocol,
        prose=prose,
        prose_train=prose_train,
        prose_eval=prose_eval,
        prose_nll=prose_nll,
        prose_tokens=tokens,
        plain=plain,
        fingerprint_before=fingerprint_before,
        watch=watch,
    )


@dataclass
class Setup:
    """One setting: its domain's code windows and B's cached features on them."""

    shared: Shared
    setting: str
    code: CorpusStreams
    code_train: Windows
    code_eval: Windows
    train: FeatureSet
    held_out: FeatureSet
    watch: Stopwatch = field(default_factory=Stopwatch)
    # Per trained module (by label): read from the module store or trained, and its training seconds.
    stored_modules: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        return self.shared.params


def prepare(shared: Shared, setting: str) -> Setup:
    """Tokenize the setting's domain, cut its windows, cache B's tap features on them."""
    params, backbone, protocol = shared.params, shared.backbone, shared.protocol
    watch = Stopwatch()
    domain, _ = parse_setting(setting)
    with watch.time("tokenize"):
        code = load_streams(backbone, "file", domain, params["dialect_words"], params["dialect_seed"])
    span, window_len = protocol.span, params["window_len"]

    def spread(stream: np.ndarray, n_windows: int, seed: int) -> Windows:
        return make_windows(backbone, stream, spread_starts(len(stream), span, n_windows, seed), protocol, window_len)

    code_eval = spread(code.streams[params["eval_split"]], params["eval_windows"], protocol.seed)
    code_train = spread(code.streams[params["train_split"]], params["n_train_windows"], protocol.seed + 1)
    with watch.time("extract_features"):
        train = extract_features(
            backbone, code_train, shared.taps, dtype=params["feature_dtype"], desc=f"{setting}: train"
        )
        held_out = extract_features(
            backbone, code_eval, shared.taps, dtype=params["feature_dtype"], desc=f"{setting}: held_out"
        )
    return Setup(shared, setting, code, code_train, code_eval, train, held_out, watch)
