"""Shared test setup: offline hub, and the tiny random-weight backbones used across test files."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub: a hub name must fail at once, never wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from abi.backbones import Backbone, load_backbone, resolve_backbone  # noqa: E402
from abi.backbones.loading import load_pretrained  # noqa: E402
from abi.claims import claim_modules  # noqa: E402

claim_modules()  # tests read any claim's results and profiles; a notebook imports only its own claim


@pytest.fixture(scope="session")
def playwright():
    """The session's one Playwright driver: its sync API cannot start twice in one process, so the book's
    render test and the JupyterLab test share it (each launches its own browser)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing; run `make setup`")
    with sync_api.sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def tiny_llama() -> Backbone:
    """The shared (lru-cached) tiny Llama: read it, never mutate it."""
    return load_backbone("tiny-llama")


@pytest.fixture
def fresh_backbone():
    """Factory for a separately constructed backbone (not the cached one), safe to mutate."""

    def build(name: str = "tiny-llama") -> Backbone:
        spec = resolve_backbone(name)
        model, tokenizer, identity = load_pretrained(spec)
        return Backbone(spec, model, tokenizer, identity)

    return build


@pytest.fixture(scope="session")
def random_ids():
    """Factory for deterministic random token ids ``[n, seq_len]``."""

    def make(n: int, seq_len: int, vocab: int = 50257, seed: int = 0) -> torch.Tensor:
        return torch.randint(0, vocab, (n, seq_len), generator=torch.Generator().manual_seed(seed))

    return make


@pytest.fixture(scope="module")
def single_thread():
    """Run a test module's small-tensor work on one thread: on a busy 2-core machine, two torch
    threads spin against each other and tiny training loops get ~20x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
