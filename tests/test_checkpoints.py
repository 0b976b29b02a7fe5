"""Module files: round trip, integrity, and refusal to apply a module to a backbone it does not fit."""

from __future__ import annotations

import pytest
import torch

from abi.checkpoints import CheckpointError, load_module, save_module
from abi.module import ABIModule, ModuleConfig, parameter_hash


@pytest.fixture
def saved(tmp_path, tiny_llama):
    module = ABIModule(ModuleConfig(tiny_llama.d_model, 2, 16), seed=3)
    path = save_module(tmp_path / "m.safetensors", module, [3, 4], tiny_llama, extra={"stage": "domain"})
    return module, path


def test_round_trip_keeps_weights_and_facts(saved, tiny_llama):
    module, path = saved
    loaded, record = load_module(path, tiny_llama)
    assert parameter_hash(loaded) == parameter_hash(module)
    assert record.taps == (3, 4) and record.backbone["family"] == "llama" and record.extra == {"stage": "domain"}
    taps = torch.randn(1, 5, 2, tiny_llama.d_model)
    assert torch.equal(loaded(taps), module.eval()(taps))


def test_truncated_file_is_named(saved):
    _, path = saved
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_module(path)


def test_flipped_weight_fails_the_hash(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_module(path)


def test_module_for_another_width_or_taps_is_refused(saved, tiny_llama):
    _, path = saved

    class Wider:
        name, d_model, n_layers = "wider", tiny_llama.d_model * 2, tiny_llama.n_layers

    class Shallower:
        name, d_model, n_layers = "shallower", tiny_llama.d_model, 3

    with pytest.raises(CheckpointError, match="d_model"):
        load_module(path, Wider())
    with pytest.raises(CheckpointError, match=r"taps \[4\] do not exist"):
        load_module(path, Shallower())


def test_declared_family_must_match(saved):
    _, path = saved
    with pytest.raises(CheckpointError, match="not on 't5' as declared"):
        load_module(path, expect_family="t5")


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="no such module file"):
        load_module(tmp_path / "nope.safetensors")
