"""Tests of abi.module: the ABI module's shape, parameter count, seeding and parameter groups."""

from __future__ import annotations

import pytest
import torch

from abi.module import ABIModule, ModuleConfig, count_parameters, parameter_hash

pytestmark = pytest.mark.usefixtures("single_thread")


def _module_size(d: int, k: int, b: int, e: int = 4, per_tap_norm: bool = True) -> int:
    """Parameter count by hand, from the architecture in the module docstring."""
    tap_norms = k * 2 * d if per_tap_norm else 0
    proj_in = k * d * b  # bias-free
    abi_norm = 2 * b
    up = b * (e * b) + e * b
    down = (e * b) * b + b
    domain_norm = 2 * b
    alpha = 1
    proj_out = b * d  # bias-free
    return tap_norms + proj_in + abi_norm + up + down + domain_norm + alpha + proj_out


def test_paper_configuration_has_the_seed_parameter_count():
    with torch.device("meta"):  # 163M parameters: count them without allocating them
        module = ABIModule(ModuleConfig(1024, 6, 4096))
    assert count_parameters(module) == 163_627_009
    assert _module_size(1024, 6, 4096) == 163_627_009


def test_anchor_configuration_count_matches_hand_formula():
    module = ABIModule(ModuleConfig(1024, 1, 512, per_tap_norm=False))
    assert module.tap_norms is None
    expected = 1024 * 512 + 2 * 512 + (512 * 2048 + 2048) + (2048 * 512 + 512) + 2 * 512 + 1 + 512 * 1024
    assert expected == 3_150_337
    assert count_parameters(module) == expected == _module_size(1024, 1, 512, per_tap_norm=False)


@pytest.mark.parametrize("d,k,b,e", [(64, 2, 32, 4), (48, 3, 16, 2)])
def test_small_configurations_match_hand_formula(d, k, b, e):
    assert count_parameters(ABIModule(ModuleConfig(d, k, b, expansion=e))) == _module_size(d, k, b, e)


def test_forward_shape_and_bottleneck_shape():
    module = ABIModule(ModuleConfig(16, 3, 8))
    taps = torch.randn(2, 5, 3, 16)
    correction = module(taps)
    assert correction.shape == (2, 5, 16)
    assert module.bottleneck(taps).shape == (2, 5, 8)
    assert torch.isfinite(correction).all() and correction.abs().sum() > 0
    # Leading dims are free: a single position works too, and agrees with the batched result.
    torch.testing.assert_close(module(taps[1, 2]), correction[1, 2], atol=1e-6, rtol=0)


def test_wrong_tap_shape_is_rejected():
    module = ABIModule(ModuleConfig(16, 3, 8))
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, 16\]"):
        module(torch.randn(2, 5, 2, 16))
    with pytest.raises(ValueError, match="tap count or model width"):
        module(torch.randn(2, 5, 3, 32))


def test_same_seed_same_weights_different_seed_different_weights():
    config = ModuleConfig(16, 2, 8)
    a, b, c = ABIModule(config, seed=7), ABIModule(config, seed=7), ABIModule(config, seed=8)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert parameter_hash(a) == parameter_hash(b)
    assert parameter_hash(a) != parameter_hash(c)
    assert not torch.equal(a.proj_in.weight, c.proj_in.weight)
    assert not torch.equal(a.domain.up.weight, c.domain.up.weight)
    assert not torch.equal(a.proj_out.weight, c.proj_out.weight)


def test_construction_does_not_touch_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ABIModule(ModuleConfig(16, 2, 8), seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_parameter_groups_partition_the_module():
    module = ABIModule(ModuleConfig(16, 3, 8))
    interface = {id(p) for p in module.interface_parameters()}
    domain = {id(p) for p in module.domain_parameters()}
    norms = {id(p) for p in [*module.tap_norms.parameters(), *module.abi_norm.parameters()]}
    everything = {id(p) for p in module.parameters()}
    assert interface == {id(module.proj_in.weight), id(module.proj_out.weight)}
    assert id(module.alpha) in domain and id(module.domain.norm.weight) in domain
    assert not interface & domain and not interface & norms and not domain & norms
    assert interface | domain | norms == everything
    assert len(module.interface_parameters()) + len(module.domain_parameters()) + len(norms) == len(everything)


def test_parameter_hash_changes_after_an_optimizer_step_only():
    module = ABIModule(ModuleConfig(16, 2, 8))
    before_all, before_domain = parameter_hash(module), parameter_hash(module.domain_parameters())
    assert before_all != before_domain
    optimizer = torch.optim.SGD(module.interface_parameters(), lr=0.1)
    loss = module(torch.randn(2, 4, 2, 16)).pow(2).mean()
    loss.backward()  # gradients alone change no value
    assert parameter_hash(module) == before_all
    optimizer.step()
    assert parameter_hash(module) != before_all
    assert parameter_hash(module.domain_parameters()) == before_domain


@pytest.mark.parametrize(
    "kwargs",
    [
        {"d_model": 0, "n_taps": 1, "bottleneck": 8},
        {"d_model": 16, "n_taps": 0, "bottleneck": 8},
        {"d_model": 16, "n_taps": 1, "bottleneck": -4},
        {"d_model": 16, "n_taps": 1, "bottleneck": 8, "expansion": 0},
        {"d_model": 16.0, "n_taps": 1, "bottleneck": 8},
    ],
)
def test_module_config_rejects_non_positive_values(kwargs):
    with pytest.raises(ValueError, match="must be a positive integer"):
        ModuleConfig(**kwargs)


def test_module_config_round_trips_through_dict():
    config = ModuleConfig(64, 2, 32, expansion=2, per_tap_norm=False)
    assert config.to_dict() == {"d_model": 64, "n_taps": 2, "bottleneck": 32, "expansion": 2, "per_tap_norm": False}
    assert ModuleConfig(**config.to_dict()) == config
