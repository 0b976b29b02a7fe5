"""Backbone updates (abi.finetune): the original stays bit-identical, the update is a new, deterministic,
cached model; divergence fails cleanly; the protected option adds its term."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import abi.finetune as finetune
from abi.backbones import TapIndexError, load_backbone
from abi.features import Windows
from abi.finetune import FinetuneCacheError, FinetuneConfig, finetune_backbone, window_nll
from abi.train import TrainingDivergedError

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIG = FinetuneConfig(steps=3, lr=1e-3, batch_windows=2, seed=0)


@pytest.fixture(scope="module")
def windows(random_ids) -> Windows:
    return Windows.causal(random_ids(12, 24, seed=5))


@pytest.fixture(scope="module")
def update(tiny_llama, windows, tmp_path_factory):
    """One cached update of the shared tiny Llama, and the base fingerprint before it."""
    before = tiny_llama.fingerprint(recompute=True)
    root = tmp_path_factory.mktemp("finetuned")
    return finetune_backbone(tiny_llama, windows, CONFIG, root=root), before, root


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_original_stays_bit_identical_and_update_is_a_new_model(update, tiny_llama):
    run, before, _ = update
    assert tiny_llama.fingerprint(recompute=True) == before
    updated = run.backbone
    assert updated.fingerprint() != before
    assert updated.name.startswith("tiny-llama+prose-ft-") and updated.name != tiny_llama.name
    assert updated.identity["base_fingerprint"] == before
    assert updated.identity["config"]["steps"] == CONFIG.steps
    assert updated.identity["data_sha256"]
    assert not any(p.requires_grad for p in updated.model.parameters())
    base_ptrs = {p.data_ptr() for p in tiny_llama.model.parameters()}
    assert not base_ptrs & {p.data_ptr() for p in updated.model.parameters()}


def test_update_is_deterministic_and_seeded(update, tiny_llama, windows):
    run, _, _ = update
    again = finetune_backbone(tiny_llama, windows, CONFIG, cache=False)
    assert again.backbone.fingerprint() == run.backbone.fingerprint()
    assert again.losses == run.losses
    other = finetune_backbone(
        tiny_llama, windows, FinetuneConfig(steps=3, lr=1e-3, batch_windows=2, seed=1), cache=False
    )
    assert other.backbone.fingerprint() != run.backbone.fingerprint()


def test_finished_update_is_reloaded_from_cache(update, tiny_llama, windows):
    run, _, root = update
    cached = finetune_backbone(tiny_llama, windows, CONFIG, root=root)
    assert cached.from_cache and not run.from_cache
    assert cached.backbone.fingerprint() == run.backbone.fingerprint()
    assert cached.backbone.name == run.backbone.name and cached.losses == run.losses


def test_tampered_cache_is_refused(tiny_llama, windows, tmp_path):
    run = finetune_backbone(tiny_llama, windows, CONFIG, root=tmp_path)
    meta = next(tmp_path.rglob("meta.json"))
    meta.write_text(meta.read_text().replace(run.backbone.fingerprint(), "0" * 64))
    with pytest.raises(FinetuneCacheError, match="delete the folder"):
        finetune_backbone(tiny_llama, windows, CONFIG, root=tmp_path)


def test_divergence_raises_a_clear_error_and_caches_nothing(tiny_llama, windows, tmp_path):
    before = tiny_llama.fingerprint(recompute=True)
    config = FinetuneConfig(steps=6, lr=1e30, batch_windows=2)
    with pytest.raises(TrainingDivergedError, match="loss became .* at step .*learning rate"):
        finetune_backbone(tiny_llama, windows, config, root=tmp_path, checkpoint_every=1)
    assert _files(tmp_path) == []
    assert tiny_llama.fingerprint(recompute=True) == before


def test_interrupted_update_resumes_to_the_same_weights(tiny_llama, windows, tmp_path, monkeypatch, capsys):
    config = FinetuneConfig(steps=5, lr=1e-3, batch_windows=2, seed=3)
    reference = finetune_backbone(tiny_llama, windows, config, cache=False)
    real, calls = finetune.update_losses, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune, "update_losses", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune_backbone(tiny_llama, windows, config, root=tmp_path, checkpoint_every=2)
    assert [p.name for p in _files(tmp_path)] == ["checkpoint.pt"]
    monkeypatch.setattr(finetune, "update_losses", real)
    resumed = finetune_backbone(tiny_llama, windows, config, root=tmp_path, checkpoint_every=2)
    assert "resuming the backbone update from step 2" in capsys.readouterr().out
    assert resumed.backbone.fingerprint() == reference.backbone.fingerprint()
    assert resumed.losses == reference.losses
    assert sorted(p.name for p in _files(tmp_path)) == ["meta.json", "model.safetensors"]


def test_protected_update_adds_its_term_and_keeps_taps_closer(tiny_llama, windows):
    taps = (3, 4)
    plain = finetune_backbone(tiny_llama, windows, FinetuneConfig(steps=4, lr=3e-3, batch_windows=2), cache=False)
    protected = finetune_backbone(
        tiny_llama,
        windows,
        FinetuneConfig(steps=4, lr=3e-3, batch_windows=2, protect_weight=1e3, protect_taps=taps),
        cache=False,
    )
    assert plain.protect_losses == [0.0] * 4
    assert protected.protect_losses[0] == 0.0  # identical weights at step 0 (Llama has no dropout)
    assert all(value > 0 for value in protected.protect_losses[1:])
    assert protected.backbone.fingerprint() != plain.backbone.fingerprint()
    assert protected.backbone.identity["config"]["protect_taps"] == list(taps)
    ids = windows.input_ids[:4]
    target = tiny_llama.tap_features(ids, taps).taps

    def drift(run) -> float:
        return float((run.backbone.tap_features(ids, taps).taps - target).pow(2).mean())

    assert drift(protected) < drift(plain)


def test_releases_protected_update_keeps_the_modules_hidden_state_closer(tiny_llama, windows):
    from abi.module import ABIModule, ModuleConfig, parameter_hash

    taps = (3, 4)
    module = ABIModule(ModuleConfig(tiny_llama.d_model, len(taps), 8), seed=0).requires_grad_(False)
    config = FinetuneConfig(
        steps=4,
        lr=3e-3,
        batch_windows=2,
        protect_weight=1e3,
        protect_taps=taps,
        protect_target="module",
        protect_module_sha256=parameter_hash(module),
    )
    plain = finetune_backbone(tiny_llama, windows, FinetuneConfig(steps=4, lr=3e-3, batch_windows=2), cache=False)
    protected = finetune_backbone(tiny_llama, windows, config, cache=False, protect_module=module)
    assert protected.protect_losses[0] == 0.0 and all(v > 0 for v in protected.protect_losses[1:])
    assert protected.backbone.identity["config"]["protect_target"] == "module"
    assert protected.backbone.correction_site == tiny_llama.correction_site
    ids = windows.input_ids[:4]
    target = module.bottleneck(tiny_llama.tap_features(ids, taps).taps)

    def drift(run) -> float:
        return float((module.bottleneck(run.backbone.tap_features(ids, taps).taps) - target).pow(2).mean())

    assert drift(protected) < drift(plain)
    with pytest.raises(ValueError, match="needs protect_module"):
        finetune_backbone(tiny_llama, windows, config, cache=False)
    other = ABIModule(ModuleConfig(tiny_llama.d_model, len(taps), 8), seed=1)
    with pytest.raises(ValueError, match="does not match"):
        finetune_backbone(tiny_llama, windows, config, cache=False, protect_module=other)


def test_encoder_decoder_update(random_ids):
    t5 = load_backbone("tiny-t5")
    before = t5.fingerprint(recompute=True)
    ids = random_ids(8, 32, seed=9)
    labels = ids[:, 16:]
    decoder = torch.cat([torch.full((8, 1), t5.pad_token_id), labels[:, :-1]], dim=1)
    t5_windows = Windows.prefix_lm(ids[:, :16], decoder, labels)
    run = finetune_backbone(
        t5,
        t5_windows,
        FinetuneConfig(steps=2, lr=1e-3, batch_windows=2, protect_weight=1.0, protect_taps=(3, 4)),
        cache=False,
    )
    assert t5.fingerprint(recompute=True) == before
    assert run.backbone.fingerprint() != before and run.backbone.is_encoder_decoder
    assert all(math.isfinite(v) for v in run.losses + run.protect_losses)


def test_window_nll_matches_the_model_loss(tiny_llama, windows):
    batch = windows.select(slice(0, 3))
    nll, counts = window_nll(tiny_llama, batch)
    with torch.no_grad():
        loss = tiny_llama.model(input_ids=batch.input_ids, labels=batch.input_ids).loss
    assert counts == [23, 23, 23]
    assert sum(nll) / sum(counts) == pytest.approx(loss.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"steps": 3, "lr": float("nan")}, "lr must be a positive finite"),
        ({"steps": 3, "warmup_steps": 5}, "warmup_steps"),
        ({"steps": 3, "protect_weight": 1.0}, "needs protect_taps"),
        ({"steps": 3, "protect_weight": -1.0}, "protect_weight must be >= 0"),
        ({"steps": 3, "protect_target": "logits"}, "protect_target must be one of"),
        (
            {"steps": 3, "protect_weight": 1.0, "protect_taps": (1,), "protect_target": "module"},
            "protect_module_sha256",
        ),
    ],
)
def test_bad_configuration_is_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(**kwargs)


def test_protected_taps_outside_the_model_fail_before_training(tiny_llama, windows, tmp_path):
    with pytest.raises(TapIndexError, match=r"layers 1\.\.4"):
        finetune_backbone(
            tiny_llama, windows, FinetuneConfig(steps=2, protect_weight=1.0, protect_taps=(9,)), root=tmp_path
        )
    assert _files(tmp_path) == []


def test_warmup_is_linear_then_constant() -> None:
    config = FinetuneConfig(steps=10, lr=1e-3, warmup_steps=4)
    assert [config.lr_at(s) for s in (0, 3, 4, 9)] == pytest.approx([2.5e-4, 1e-3, 1e-3, 1e-3])
