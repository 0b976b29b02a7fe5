"""The migration of claim 2: shared sentences (abi.shared_text), pooled states, rectangular Procrustes and
initialisation (abi.transfer), KD calibration (abi.kd_calibration)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from abi.data import CorpusFile
from abi.features import IGNORE_INDEX, Windows, extract_features
from abi.kd_calibration import KDConfig, kd_calibrate, kd_loss
from abi.module import ABIModule, ModuleConfig, parameter_hash
from abi.shared_text import SentenceMismatchError, SharedText, check_paired, draw_shared_text, tokenize_shared
from abi.transfer import (
    MigrationError,
    PooledStates,
    fit_interface_maps,
    migrate_module,
    orthogonal_procrustes,
    pooled_states,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _semi_orthogonal(rows: int, cols: int, seed: int) -> np.ndarray:
    """A [rows, cols] matrix with orthonormal columns (rows >= cols) or rows (rows < cols)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(max(rows, cols), min(rows, cols))))
    return q if rows >= cols else q.T


# -- Procrustes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("d_source", "d_target"), [(6, 6), (5, 9), (9, 5)])
def test_procrustes_recovers_a_known_map_and_scale(d_source: int, d_target: int) -> None:
    # Centred source rows with identity covariance, so the map is identifiable in both shapes.
    raw = np.random.default_rng(0).normal(size=(40, d_source))
    x, _ = np.linalg.qr(raw - raw.mean(axis=0))
    truth = _semi_orthogonal(d_target, d_source, seed=1)
    y = 3.0 * x @ truth.T + 7.0  # an offset that centring removes
    fit = orthogonal_procrustes(x, y, scale=True)
    np.testing.assert_allclose(fit.matrix.numpy(), truth, atol=1e-5)
    assert fit.scale == pytest.approx(3.0, rel=1e-5)
    assert fit.relative_residual < 1e-5
    unscaled = orthogonal_procrustes(x, y)
    assert unscaled.scale == 1.0 and unscaled.best_scale == pytest.approx(3.0, rel=1e-5)


@pytest.mark.parametrize(("d_source", "d_target"), [(4, 7), (7, 4)])
def test_rectangular_solution_is_the_data_block_of_scipys_padded_problem(d_source: int, d_target: int) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, d_source))
    y = x @ rng.normal(size=(d_source, d_target)) + 0.3 * rng.normal(size=(50, d_target))
    fit = orthogonal_procrustes(x, y)
    width = max(d_source, d_target)
    xc, yc = x - x.mean(0), y - y.mean(0)
    padded_x = np.pad(xc, ((0, 0), (0, width - d_source)))
    padded_y = np.pad(yc, ((0, 0), (0, width - d_target)))
    rotation, _ = scipy.linalg.orthogonal_procrustes(padded_x, padded_y)  # padded_x @ R ≈ padded_y
    np.testing.assert_allclose(fit.matrix.double().numpy().T, rotation[:d_source, :d_target], atol=1e-5)


def test_procrustes_rejects_unpaired_rows() -> None:
    with pytest.raises(SentenceMismatchError, match="paired rows"):
        orthogonal_procrustes(np.zeros((5, 3)), np.zeros((6, 3)))


# -- initialisation -------------------------------------------------------------------------------------
def _pooled(model: str, taps: np.ndarray, final: np.ndarray, text: str = "t") -> PooledStates:
    return PooledStates(model, text, taps, final)


def test_initialisation_maps_the_source_behaviour_onto_the_target() -> None:
    """T's spaces are exact isometric images of S's: the migrated module on T must write the
    image of what the source module writes on S, for inputs it never saw."""
    rng = np.random.default_rng(0)
    d_s, d_t, n = 6, 10, 64
    embed_in, embed_out = _semi_orthogonal(d_t, d_s, 1), _semi_orthogonal(d_t, d_s, 2)
    taps_s, final_s = rng.normal(size=(n, 1, d_s)), rng.normal(size=(n, d_s))
    source_states = _pooled("S", taps_s, final_s)
    target_states = _pooled("T", taps_s @ embed_in.T, 2.5 * final_s @ embed_out.T + 1.0)
    maps = fit_interface_maps(source_states, target_states)
    source = ABIModule(ModuleConfig(d_s, 1, 4, per_tap_norm=False), seed=5)
    migrated = migrate_module(source, d_t, maps)
    probe = torch.randn(20, 1, d_s, dtype=torch.float64).float()
    with torch.no_grad():
        on_target = migrated(probe @ torch.from_numpy(embed_in.T).float())
        expected = 2.5 * source(probe) @ torch.from_numpy(embed_out.T).float()
    torch.testing.assert_close(on_target, expected, atol=1e-4, rtol=1e-4)
    assert parameter_hash(migrated.domain_parameters()) == parameter_hash(source.domain_parameters())
    assert maps.output_map.scale == pytest.approx(2.5, rel=1e-4)


def test_random_interface_keeps_the_domain_part() -> None:
    source = ABIModule(ModuleConfig(6, 1, 4, per_tap_norm=False), seed=5)
    migrated = migrate_module(source, 10, None, seed=9)
    assert migrated.proj_in.weight.shape == (4, 10) and migrated.proj_out.weight.shape == (10, 4)
    assert parameter_hash(migrated.domain_parameters()) == parameter_hash(source.domain_parameters())


def test_per_tap_norm_modules_are_refused() -> None:
    with pytest.raises(MigrationError, match="per_tap_norm"):
        migrate_module(ABIModule(ModuleConfig(6, 1, 4, per_tap_norm=True)), 10, None)


def test_interface_maps_refuse_states_of_other_sentences() -> None:
    a = _pooled("S", np.zeros((4, 1, 3)), np.zeros((4, 3)), text="one")
    b = _pooled("T", np.zeros((4, 1, 5)), np.zeros((4, 5)), text="other")
    with pytest.raises(SentenceMismatchError, match="different snippets"):
        fit_interface_maps(a, b)


# -- shared sentences and pooled states -------------------------------------------------------------------
FILES = [
    CorpusFile(f"pkg-1.0/m{i}.py", "pkg", "".join(f"def f{i}_{j}(x):\n    return x + {j}\n" for j in range(8)), "0")
    for i in range(3)
]


def test_shared_text_is_seeded_and_comes_from_the_files() -> None:
    a = draw_shared_text(FILES, 10, 40, 30, seed=1)
    assert a == draw_shared_text(FILES, 10, 40, 30, seed=1)
    assert a.sha256 != draw_shared_text(FILES, 10, 40, 30, seed=2).sha256
    texts = {f.text for f in FILES}
    for context, sentence in zip(a.contexts, a.sentences):
        assert any(context + sentence in t for t in texts)
        assert len(context) <= 40 and len(sentence) <= 30 and sentence.strip()


def test_tokenize_splits_at_the_seam(tiny_llama) -> None:
    text = draw_shared_text(FILES, 6, 40, 30, seed=0)
    tokens = tokenize_shared(text, tiny_llama.tokenizer, tiny_llama.name)
    for ctx, sent, context, sentence in zip(tokens.context_ids, tokens.sentence_ids, text.contexts, text.sentences):
        assert tiny_llama.tokenizer.decode(list(ctx)) == context
        assert tiny_llama.tokenizer.decode(list(sent)) == sentence


def test_mismatched_sentence_sets_are_refused(tiny_llama) -> None:
    text = draw_shared_text(FILES, 6, 40, 30, seed=0)
    other = SharedText(text.contexts[:5], text.sentences[:5])
    with pytest.raises(SentenceMismatchError, match="differ"):
        check_paired(
            tokenize_shared(text, tiny_llama.tokenizer, "a"), tokenize_shared(other, tiny_llama.tokenizer, "b")
        )


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-t5"])
def test_pooled_states_do_not_depend_on_batching(name: str, tmp_path) -> None:
    from abi.backbones import load_backbone

    backbone = load_backbone(name)
    text = draw_shared_text(FILES, 8, 40, 30, seed=0)
    tokens = tokenize_shared(text, backbone.tokenizer, backbone.name)
    batched = pooled_states(backbone, tokens, [backbone.n_layers], batch_size=8, root=tmp_path / "a")
    alone = pooled_states(backbone, tokens, [backbone.n_layers], batch_size=1, root=tmp_path / "b")
    np.testing.assert_allclose(batched.taps, alone.taps, atol=1e-4)
    np.testing.assert_allclose(batched.final, alone.final, atol=1e-4)
    assert batched.taps.shape == (8, 1, backbone.d_model)
    cached = pooled_states(backbone, tokens, [backbone.n_layers], root=tmp_path / "a")
    np.testing.assert_array_equal(cached.final, batched.final)


# -- KD -------------------------------------------------------------------------------------------------
def test_kd_loss_is_zero_at_identity_and_scales_with_t_squared() -> None:
    logits = torch.randn(6, 11, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 2, 3, IGNORE_INDEX, 4, 5])
    loss, parts = kd_loss(logits, logits, labels, temperature=2.0, ce_weight=0.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and parts["kl"] == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(6, 11, generator=torch.Generator().manual_seed(1))
    for temperature in (1.0, 2.0, 4.0):
        p = torch.softmax(logits / temperature, -1)
        kl = (p * (p.log() - torch.log_softmax(student / temperature, -1))).sum(-1).mean()
        loss, _ = kd_loss(student, logits, labels, temperature=temperature, kl_weight=1.0, ce_weight=0.0)
        assert loss.item() == pytest.approx(temperature**2 * kl.item(), rel=1e-5)
    ce = torch.nn.functional.cross_entropy(student, labels, ignore_index=IGNORE_INDEX)
    loss, parts = kd_loss(student, logits, labels, kl_weight=0.0, ce_weight=1.0)
    assert loss.item() == pytest.approx(ce.item(), rel=1e-6) and parts["ce"] == pytest.approx(ce.item(), rel=1e-6)


def test_kd_needs_at_least_one_step() -> None:
    with pytest.raises(ValueError, match="at least 1 step"):
        KDConfig(steps=0)


@pytest.fixture(scope="module")
def kd_setup(tiny_llama, random_ids, tmp_path_factory):
    windows = Windows.causal(random_ids(6, 16, seed=4))
    features = extract_features(tiny_llama, windows, [4], root=tmp_path_factory.mktemp("features"))
    teacher = ABIModule(ModuleConfig(64, 1, 16, per_tap_norm=False), seed=1)
    taps, _, _ = features.batch(slice(None))
    with torch.no_grad():
        corrections = teacher(taps)
    return features, corrections


@pytest.mark.parametrize("head_dtype", ["float32", "bfloat16"])
def test_interface_kd_changes_only_the_interface(tiny_llama, kd_setup, head_dtype: str) -> None:
    features, corrections = kd_setup
    student = migrate_module(ABIModule(ModuleConfig(64, 1, 16, per_tap_norm=False), seed=2), 64, None, seed=3)
    domain, proj_in = parameter_hash(student.domain_parameters()), student.proj_in.weight.clone()
    log = kd_calibrate(
        student,
        corrections,
        tiny_llama,
        features,
        KDConfig(steps=4, lr=1e-2, positions=8, head_dtype=head_dtype),
        seed=0,
    )
    assert parameter_hash(student.domain_parameters()) == domain
    assert log.to_dict()["frozen_unchanged"] and len(log.losses) == 4
    assert not torch.equal(student.proj_in.weight, proj_in)
    assert all(p.requires_grad for p in student.parameters())  # flags restored


def test_training_everything_changes_the_domain_part(tiny_llama, kd_setup) -> None:
    features, corrections = kd_setup
    student = ABIModule(ModuleConfig(64, 1, 16, per_tap_norm=False), seed=2)
    domain = parameter_hash(student.domain_parameters())
    log = kd_calibrate(student, corrections, tiny_llama, features, KDConfig(steps=2, positions=8, train="all"))
    assert parameter_hash(student.domain_parameters()) != domain and not log.to_dict()["frozen_unchanged"]


def test_kd_refuses_teacher_corrections_of_another_width(tiny_llama, kd_setup) -> None:
    features, corrections = kd_setup
    student = ABIModule(ModuleConfig(32, 1, 16, per_tap_norm=False))
    with pytest.raises(MigrationError, match="d_model=32"):
        kd_calibrate(student, corrections, tiny_llama, features, KDConfig(steps=1))
    with pytest.raises(ValueError, match="do not cover"):
        kd_calibrate(student, corrections[:2], tiny_llama, features, KDConfig(steps=1))


def test_low_precision_head_is_close_to_the_float32_head(tiny_llama) -> None:
    hidden = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    exact = tiny_llama.head(hidden)
    fast = tiny_llama.head(hidden, dtype=torch.bfloat16)
    assert fast.dtype == torch.float32 and fast.shape == exact.shape
    assert (fast - exact).abs().max() < 0.05 * exact.abs().max()
    assert tiny_llama.head(hidden, dtype=torch.bfloat16) is not fast and torch.equal(
        tiny_llama.head(hidden, dtype=torch.bfloat16), fast
    )


def test_bos_prefix_is_prepended_and_dropped(tiny_llama, random_ids) -> None:
    from dataclasses import replace

    from abi.backbones import Backbone

    with_bos = Backbone(replace(tiny_llama.spec, bos_prefix=True), tiny_llama.model, tiny_llama.tokenizer, {})
    ids = random_ids(2, 12, seed=7)
    out = with_bos.tap_features(ids, [2, 4])
    bos = torch.full((2, 1), tiny_llama.tokenizer.bos_token_id)
    reference = tiny_llama.tap_features(torch.cat([bos, ids], dim=1), [2, 4])
    assert out.final.shape == (2, 12, 64)
    torch.testing.assert_close(out.taps, reference.taps[:, 1:])
    torch.testing.assert_close(with_bos.logits(out.final), with_bos.model_logits(ids), atol=1e-5, rtol=0)
    assert not torch.allclose(out.final, tiny_llama.tap_features(ids, [4]).final)


def test_kd_stops_on_a_validation_plateau_and_keeps_the_best_state(tiny_llama, kd_setup) -> None:
    from abi.kd_calibration import KDValidation
    from abi.train import PlateauRule

    features, corrections = kd_setup
    student = migrate_module(ABIModule(ModuleConfig(64, 1, 16, per_tap_norm=False), seed=2), 64, None, seed=3)
    validation = KDValidation(features, corrections, PlateauRule(every=1, patience=1, min_delta=10.0))
    log = kd_calibrate(
        student, corrections, tiny_llama, features, KDConfig(steps=50, positions=8), validation=validation
    )
    record = log.to_dict()
    # min_delta=10 asks for an impossible improvement: the first evaluation after step 0 stops the run
    assert record["steps_run"] == 1
    assert [e["step"] for e in record["evaluations"]] == [0, 1]
    losses = [e["val_loss"] for e in record["evaluations"]]
    assert record["best_step"] == losses.index(min(losses))


def test_kd_keeps_the_lowest_validation_loss_even_below_min_delta(tiny_llama, kd_setup) -> None:
    """A run that improves by less than min_delta stops on the plateau rule, but the state it keeps is
    the one with the lowest validation loss, not its start: slow arms must not be sent back to step 0."""
    from abi.kd_calibration import KDValidation, validation_loss
    from abi.train import PlateauRule

    features, corrections = kd_setup
    student = migrate_module(ABIModule(ModuleConfig(64, 1, 16, per_tap_norm=False), seed=2), 64, None, seed=3)
    config = KDConfig(steps=50, positions=8, lr=1e-3)
    validation = KDValidation(features, corrections, PlateauRule(every=2, patience=3, min_delta=10.0))
    record = kd_calibrate(student, corrections, tiny_llama, features, config, validation=validation).to_dict()
    losses = [e["val_loss"] for e in record["evaluations"]]
    assert record["steps_run"] == 6 and len(losses) == 4
    assert min(losses[1:]) < losses[0], "KD lowers the validation loss, by less than min_delta"
    assert record["best_step"] == record["evaluations"][losses.index(min(losses))]["step"] > 0
    assert validation_loss(student, tiny_llama, validation, config)["val_loss"] == pytest.approx(min(losses))
