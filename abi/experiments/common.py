"""Set-up shared by the claim experiments: corpus -> token streams -> windows -> cached features.

Training windows come from the train split; evaluation windows from a held-out split (files
never seen in training) unless ``eval_split="train"`` reproduces the original's in-training
evaluation. All draws are seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from abi.backbones import DEFAULT_CORRECTION_SITE, Backbone
from abi.backbones.limits import check_window_fits
from abi.data import (
    Corpus,
    CorpusSplit,
    CorpusTooShortError,
    decoder_windows,
    load_code_corpus,
    prefix_lm_windows,
    split_corpus,
    tiled_starts,
    token_stream,
)
from abi.dialect import check_dialect_words, dialect_split
from abi.features import FeatureSet, Windows
from abi.module import ABIModule, ModuleConfig
from abi.nib import NIBProtocol
from abi.train import train_domain_stage

SPLITS = ("train", "validation", "test")


@dataclass
class CorpusStreams:
    """Token streams of the three splits plus the identities recorded in result files."""

    streams: dict[str, np.ndarray]
    identity: dict[str, Any]


DOMAINS = ("python", "python-dialect")


def check_domain(domain: str, dialect_words: int = 0) -> str:
    """Refuse an unknown domain or a dialect dose out of range, naming the valid values."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid domains: {', '.join(DOMAINS)}.")
    check_dialect_words(dialect_words)
    return domain


@lru_cache(maxsize=4)
def domain_split(
    split_level: str = "file", domain: str = "python", dialect_words: int = 0, dialect_seed: int = 0
) -> tuple[Corpus, CorpusSplit]:
    """The domain corpus and its train/validation/test split: the pinned code corpus, or its seeded
    dialect (:mod:`abi.dialect`) with ``dialect_words`` renamed words (same files, same splits)."""
    check_domain(domain, dialect_words)
    corpus = load_code_corpus()
    split = split_corpus(corpus, level=split_level)
    if domain == "python-dialect":
        corpus, split, _ = dialect_split(corpus, split, dialect_words, dialect_seed)
    return corpus, split


def check_split_fits(split: CorpusSplit, tokens_needed: dict[str, int], domain: str) -> None:
    """Refuse, before any model loads, a split whose text cannot hold the windows asked for.

    A token covers at least one character, so a split with fewer characters than the tokens its windows
    need is certainly too small; a tighter check follows once the text is tokenized (before any feature).
    """
    for name, needed in tokens_needed.items():
        chars = sum(len(f.text) for f in split.files(name))
        if chars < needed:
            raise CorpusTooShortError(
                f"the {name} split of domain {domain!r} has {chars} characters, fewer than the {needed} tokens its "
                f"windows need; ask for fewer or shorter windows (valid domains: {', '.join(DOMAINS)})."
            )


def load_streams(
    backbone: Backbone, split_level: str = "file", domain: str = "python", dialect_words: int = 0, dialect_seed: int = 0
) -> CorpusStreams:
    """Tokenize the domain corpus per split with the backbone's own tokenizer (cached): the pinned
    code corpus, or its seeded dialect (:mod:`abi.dialect`) with ``dialect_words`` renamed words."""
    corpus, split = domain_split(split_level, domain, dialect_words, dialect_seed)
    streams = {name: token_stream(getattr(split, name), backbone.tokenizer) for name in SPLITS}
    identity = {
        "corpus": corpus.identity,
        "split": split.identity(),
        "tokens": {name: int(len(stream)) for name, stream in streams.items()},
    }
    return CorpusStreams(streams, identity)


def spread_starts(n_tokens: int, span: int, n_windows: int, seed: int) -> np.ndarray:
    """Non-overlapping windows spread over the whole stream: a seeded choice of tiled slots.

    Evaluation windows should cover many files, not the first few in path order, and must not
    overlap, since the window is the unit of the bootstrap.
    """
    slots = n_tokens // span
    if slots < n_windows:
        raise CorpusTooShortError(
            f"{n_windows} non-overlapping windows of {span} tokens need {n_windows * span} tokens, but the split "
            f"has {n_tokens}; ask for at most {slots} windows, shorter windows, or a bigger split."
        )
    chosen = np.random.default_rng(seed).choice(slots, size=n_windows, replace=False)
    return np.sort(chosen) * span


def make_windows(
    backbone: Backbone, stream: np.ndarray, starts: np.ndarray, protocol: NIBProtocol, window_len: int
) -> Windows:
    """Windows in the backbone's layout: causal chunks, or prefix + continuation for T5."""
    check_window_fits(backbone, window_len)
    if backbone.is_encoder_decoder:
        batch = prefix_lm_windows(stream, starts, protocol.prefix_len, protocol.cont_len, backbone.pad_token_id)
        return Windows.prefix_lm(batch.encoder_ids, batch.decoder_input_ids, batch.labels)
    return Windows.causal(decoder_windows(stream, starts, window_len))


def window_span(backbone: Backbone, protocol: NIBProtocol, window_len: int) -> int:
    """Tokens one window consumes from the stream."""
    return protocol.prefix_len + protocol.cont_len if backbone.is_encoder_decoder else window_len


def check_protocol_fits(backbone: Backbone, protocol: NIBProtocol) -> None:
    """Refuse a protocol whose layout the backbone cannot run, before any work."""
    if backbone.is_encoder_decoder and protocol.layout != "prefix":
        raise ValueError(
            f"protocol {protocol.name!r} feeds causal chunks, but {backbone.name!r} is an encoder-decoder; "
            "use protocol='t5-prefix'."
        )
    if not backbone.is_encoder_decoder and protocol.layout != "causal":
        raise ValueError(
            f"protocol {protocol.name!r} is for encoder-decoders (prefix + continuation), but {backbone.name!r} "
            "is decoder-only; use protocol='faq'."
        )


def training_windows(
    backbone: Backbone, streams: CorpusStreams, protocol: NIBProtocol, window_len: int, n_windows: int
) -> Windows:
    """Consecutive, non-overlapping windows of the train split (every token used once)."""
    stream = streams.streams["train"]
    span = window_span(backbone, protocol, window_len)
    return make_windows(backbone, stream, tiled_starts(len(stream), span, n_windows), protocol, window_len)


class TappedModule(nn.Module):
    """A module that reads its own taps out of a feature set cached for a union of taps."""

    def __init__(self, module: nn.Module, module_taps: list[int], feature_taps: tuple[int, ...]):
        super().__init__()
        missing = sorted(set(module_taps) - set(feature_taps))
        if missing:
            raise ValueError(f"features were cached for taps {list(feature_taps)}, not {missing}.")
        self.module = module
        self.register_buffer("index", torch.tensor([feature_taps.index(t) for t in module_taps]), persistent=False)

    def forward(self, taps: Tensor) -> Tensor:
        return self.module(taps.index_select(-2, self.index))


def check_held_out_splits(params: dict[str, Any]) -> None:
    """Evaluation on a held-out split, training on another one: the rule of claims 2 and 4."""
    if params["eval_split"] not in ("test", "validation"):
        raise ValueError(f"eval_split must be 'test' or 'validation' (held out), got {params['eval_split']!r}.")
    if params["train_split"] not in ("train", "validation") or params["train_split"] == params["eval_split"]:
        raise ValueError(
            f"train_split must be 'train' or 'validation' and differ from eval_split "
            f"({params['eval_split']!r}), got {params['train_split']!r}."
        )


PROJ_OUT_INITS = ("zero", "xavier")


def check_proj_out_init(init: str) -> str:
    """``zero``: the module starts as the bare backbone; ``xavier``: the release's random start."""
    if init not in PROJ_OUT_INITS:
        raise ValueError(f"unknown proj_out_init {init!r}; valid values: {', '.join(PROJ_OUT_INITS)}.")
    return init


def untrained_module(config: ModuleConfig, seed: int, zero_init_proj_out: bool) -> ABIModule:
    """A new module; with ``zero_init_proj_out`` its output projection starts at zero, so the module
    starts as the bare backbone instead of adding a random correction."""
    module = ABIModule(config, seed=seed)
    if zero_init_proj_out:
        torch.nn.init.zeros_(module.proj_out.weight)
    return module


def frozen_domain_module(
    module: ABIModule,
    backbone: Backbone,
    features: FeatureSet,
    params: dict[str, Any],
    steps: int,
    seed: int,
    label: str,
    head_dtype: torch.dtype | None = None,
) -> tuple[ABIModule, list[float]]:
    """``module`` trained by the domain stage (``domain_lr``, ``domain_batch_windows``), then frozen;
    and its per-step losses."""
    log = train_domain_stage(
        module,
        backbone,
        features,
        steps,
        lr=params["domain_lr"],
        batch_windows=params["domain_batch_windows"],
        seed=seed,
        desc=f"domain stage: {label}",
        head_dtype=head_dtype,
    )
    module.requires_grad_(False)
    return module, log.losses


def parse_setting(name: str) -> tuple[str, str]:
    """``"<domain>"`` or ``"<domain>@<correction site>"`` -> (domain, site); the site defaults to the release's."""
    domain, _, site = name.partition("@")
    return domain, site or DEFAULT_CORRECTION_SITE
