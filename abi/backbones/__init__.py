"""Frozen backbones behind one interface, from an offline registry (see ``registry``)."""

from __future__ import annotations

from functools import lru_cache

from abi.backbones.interface import (
    CORRECTION_SITES,
    DEFAULT_CORRECTION_SITE,
    Backbone,
    TapIndexError,
    TapOutput,
    check_correction_site,
)
from abi.backbones.loading import load_pretrained
from abi.backbones.registry import (
    REGISTRY,
    BackboneSpec,
    BackboneUnavailableError,
    UnknownBackboneError,
    resolve_backbone,
)

__all__ = [
    "CORRECTION_SITES",
    "DEFAULT_CORRECTION_SITE",
    "REGISTRY",
    "Backbone",
    "BackboneSpec",
    "BackboneUnavailableError",
    "TapIndexError",
    "TapOutput",
    "UnknownBackboneError",
    "check_correction_site",
    "load_backbone",
    "resolve_backbone",
]


def load_backbone(name: str, correction_site: str = DEFAULT_CORRECTION_SITE) -> Backbone:
    """The frozen backbone registered under ``name`` or a local model dir (loaded once per process),
    with ABI corrections added at ``correction_site``."""
    check_correction_site(correction_site)
    backbone = _load_once(name)
    return backbone if correction_site == backbone.correction_site else backbone.at_site(correction_site)


@lru_cache(maxsize=8)
def _load_once(name: str) -> Backbone:
    spec = resolve_backbone(name)
    model, tokenizer, identity = load_pretrained(spec)
    return Backbone(spec, model, tokenizer, identity)
