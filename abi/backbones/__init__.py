"""Frozen backbones behind one interface, from an offline registry (see ``registry``)."""

from __future__ import annotations

from functools import lru_cache

from abi.backbones.interface import Backbone, TapIndexError, TapOutput
from abi.backbones.loading import load_pretrained
from abi.backbones.registry import (
    REGISTRY,
    BackboneSpec,
    BackboneUnavailableError,
    UnknownBackboneError,
    resolve_backbone,
)

__all__ = [
    "REGISTRY",
    "Backbone",
    "BackboneSpec",
    "BackboneUnavailableError",
    "TapIndexError",
    "TapOutput",
    "UnknownBackboneError",
    "load_backbone",
    "resolve_backbone",
]


@lru_cache(maxsize=8)
def load_backbone(name: str) -> Backbone:
    """Load (once per process) the frozen backbone registered under ``name`` or a local model dir."""
    spec = resolve_backbone(name)
    model, tokenizer, identity = load_pretrained(spec)
    return Backbone(spec, model, tokenizer, identity)
