"""Moving a frozen domain module to another backbone: the algorithm of claim 2.

A module trained on a source model S is carried to a target model T of another architecture,
tokenizer and vocabulary. Only its interface (``proj_in``, ``proj_out``) is rebuilt; the domain
part (``abi_norm``, the domain MLP, ``alpha``) moves unchanged and stays frozen. Read top to bottom:

1. **Shared text** (:mod:`abi.shared_text`): ``(context, sentence)`` snippets of held-in training
   text, the same characters for both models, each tokenized by each model's own tokenizer;
   two token sets that were not made from the same text are refused before any model runs.
2. **Pooled states** (:func:`pooled_states`): for every snippet, the mean over the positions
   that *predict the sentence's tokens* (having read the context and the sentence so far) of the
   tap hidden states and of the final hidden state. Decoder-only: the model reads context +
   sentence. Encoder-decoder (prefix-LM, as the module was trained): the encoder reads the
   context, the decoder the sentence shifted right. Both sides describe the same text.
3. **Orthogonal Procrustes** (:func:`orthogonal_procrustes`) between centred pooled states,
   rectangular where the widths differ.
4. **Initialisation** (:func:`fit_interface_maps`, :func:`migrate_module`): the input map takes
   T's taps into S's tap space, so ``proj_in_T = proj_in_S @ R_in``; the output map takes S's
   final hidden space into T's with the scaled-Procrustes factor ``s``, so
   ``proj_out_T = s * R_out @ proj_out_S``.
5. **KD calibration** (:mod:`abi.kd_calibration`): the target's native module is the teacher,
   only the interface trainable; the frozen part's hash is checked after.

Every step is deterministic given its seed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor, nn

from abi.backbones import Backbone
from abi.module import ABIModule
from abi.paths import cache_dir
from abi.progress import tqdm
from abi.shared_text import SentenceMismatchError, TokenizedSentences

_POOLED_CACHE_FORMAT = 2  # 2: last tap after the final norm; pooled final state at the correction site


class MigrationError(ValueError):
    """A module that cannot be migrated as asked (shape, taps, frozen part changed)."""


# -- 2. pooled states -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PooledStates:
    """Per snippet: pooled taps ``[N, K, d]`` and pooled final hidden state ``[N, d]`` (float64)."""

    model: str
    text_sha256: str
    taps: np.ndarray
    final: np.ndarray


def _pool_batches(sentences: TokenizedSentences, encoder_decoder: bool, batch_size: int) -> list[list[int]]:
    """Snippet indices grouped so padding never changes a pooled state.

    Decoder-only models are causal: right padding cannot reach earlier positions, so any lengths
    batch together (sorted, to pad little). An encoder would attend to padding, so T5 batches only
    snippets with the same context length (the decoder is causal and right-padded).
    """
    n = len(sentences)
    if encoder_decoder:
        order = sorted(range(n), key=lambda i: (len(sentences.context_ids[i]), len(sentences.sentence_ids[i])))
        groups: list[list[int]] = []
        for i in order:
            if (
                groups
                and len(groups[-1]) < batch_size
                and len(sentences.context_ids[groups[-1][0]]) == len(sentences.context_ids[i])
            ):
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups
    order = sorted(range(n), key=lambda i: len(sentences.context_ids[i]) + len(sentences.sentence_ids[i]))
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _padded(rows: list[list[int]], pad: int) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)


@torch.no_grad()
def _compute_pooled(
    backbone: Backbone, sentences: TokenizedSentences, taps: tuple[int, ...], batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    n_snippets, d_model = len(sentences), backbone.d_model
    pooled_taps, pooled_final = np.zeros((n_snippets, len(taps), d_model)), np.zeros((n_snippets, d_model))
    pad = backbone.pad_token_id
    groups = _pool_batches(sentences, backbone.is_encoder_decoder, batch_size)
    for group in tqdm(groups, desc=f"pooled states ({backbone.name})", unit="batch"):
        contexts = [list(sentences.context_ids[i]) for i in group]
        sentence_ids = [list(sentences.sentence_ids[i]) for i in group]
        if backbone.is_encoder_decoder:
            out = backbone.tap_features(
                _padded([[pad] + s[:-1] for s in sentence_ids], pad),
                taps,
                encoder_ids=torch.tensor(contexts, dtype=torch.long),
            )
            spans = [(0, len(s)) for s in sentence_ids]
        else:
            out = backbone.tap_features(_padded([c + s for c, s in zip(contexts, sentence_ids)], pad), taps)
            spans = [(len(c) - 1, len(c) - 1 + len(s)) for c, s in zip(contexts, sentence_ids)]
        site_states = backbone.correction_space(out.final)
        for row, (i, (lo, hi)) in enumerate(zip(group, spans)):
            pooled_taps[i] = out.taps[row, lo:hi].double().mean(dim=0).numpy()
            pooled_final[i] = site_states[row, lo:hi].double().mean(dim=0).numpy()
    return pooled_taps, pooled_final


def pooled_states(
    backbone: Backbone,
    sentences: TokenizedSentences,
    taps: Sequence[int],
    batch_size: int = 16,
    root: Path | None = None,
) -> PooledStates:
    """Mean over the positions that predict each sentence's tokens, of the taps and the final state.

    Cached on disk (``cache_dir()/pooled``) by backbone fingerprint, taps and token ids: the same
    model's states on the same snippets are computed once, whichever pair they serve.
    """
    taps = backbone.check_taps(taps)
    if sentences.model != backbone.name:
        raise SentenceMismatchError(f"sentences tokenized for {sentences.model!r} given to {backbone.name!r}.")
    key = hashlib.sha256(
        json.dumps(
            {
                "format": _POOLED_CACHE_FORMAT,
                "backbone": backbone.fingerprint(),
                "correction_site": backbone.correction_site,
                "taps": list(taps),
                "bos_prefix": backbone.bos_prefix,
                "ids": sentences.ids_sha256,
            }
        ).encode()
    ).hexdigest()[:24]
    path = (root or cache_dir() / "pooled") / backbone.name.replace("/", "_") / f"{key}.npz"
    if path.is_file():
        stored = np.load(path)
        return PooledStates(backbone.name, sentences.text_sha256, stored["taps"], stored["final"])
    pooled_taps, pooled_final = _compute_pooled(backbone, sentences, taps, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, taps=pooled_taps, final=pooled_final)
    tmp.replace(path)
    return PooledStates(backbone.name, sentences.text_sha256, pooled_taps, pooled_final)


# -- 3. orthogonal Procrustes ---------------------------------------------------------------------
@dataclass(frozen=True)
class ProcrustesFit:
    """``target ≈ scale * (source - source_mean) @ matrix.T + target_mean``; ``matrix`` is
    ``[d_target, d_source]`` with orthonormal columns (``d_source <= d_target``) or rows.

    ``relative_residual`` measures the fit up to scale (with ``best_scale``, the least-squares
    factor, whether or not ``scale`` uses it): how much of the centred target the rotated source
    explains, ``explained_fraction = 1 - relative_residual^2``.
    """

    matrix: Tensor
    scale: float
    source_mean: Tensor
    target_mean: Tensor
    relative_residual: float
    best_scale: float
    n_samples: int

    def describe(self) -> dict[str, Any]:
        return {
            "shape": list(self.matrix.shape),
            "scale": self.scale,
            "best_scale": self.best_scale,
            "relative_residual": self.relative_residual,
            "explained_fraction": 1.0 - self.relative_residual**2,
            "n_samples": self.n_samples,
        }


def orthogonal_procrustes(
    source: ArrayLike, target: ArrayLike, centre: bool = True, scale: bool = False
) -> ProcrustesFit:
    """The semi-orthogonal map ``W`` (and, with ``scale``, the factor ``s``) that best takes the
    rows of ``source [N, d_s]`` onto the rows of ``target [N, d_t]``.

    ``W = U V^T`` from the thin SVD ``U S V^T`` of the cross-covariance ``target^T source``
    (``d_t x d_s``): it maximises ``<source W^T, target>`` among matrices with orthonormal
    columns (or rows, when ``d_s > d_t``). Where the widths differ this *rectangular* solution is
    used rather than zero-padding the narrower side to a square problem: padding adds coordinates
    that carry no data, and the square solution's rows/columns for them are arbitrary (whatever the
    SVD returns for zero singular values). Its data block is exactly this ``W`` when the
    cross-covariance has full rank (``tests/test_transfer.py`` checks it against
    ``scipy.linalg.orthogonal_procrustes`` on the padded problem). With ``scale``, ``s`` is the
    least-squares factor ``<source W^T, target> / |source W^T|^2`` (scaled Procrustes).
    """
    source_rows = np.asarray(source, dtype=np.float64)
    target_rows = np.asarray(target, dtype=np.float64)
    if source_rows.ndim != 2 or target_rows.ndim != 2 or source_rows.shape[0] != target_rows.shape[0]:
        raise SentenceMismatchError(
            f"Procrustes needs paired rows: source {source_rows.shape}, target {target_rows.shape}; the same "
            "snippets on both sides."
        )
    if source_rows.shape[0] < 2 or not (np.isfinite(source_rows).all() and np.isfinite(target_rows).all()):
        raise ValueError("Procrustes needs at least 2 finite paired rows.")
    source_mean = source_rows.mean(axis=0) if centre else np.zeros(source_rows.shape[1])
    target_mean = target_rows.mean(axis=0) if centre else np.zeros(target_rows.shape[1])
    source_centred, target_centred = source_rows - source_mean, target_rows - target_mean
    u, _, vt = np.linalg.svd(target_centred.T @ source_centred, full_matrices=False)
    matrix = u @ vt
    mapped = source_centred @ matrix.T
    best = float(np.sum(mapped * target_centred) / np.sum(mapped * mapped))
    residual = float(np.linalg.norm(best * mapped - target_centred) / np.linalg.norm(target_centred))
    return ProcrustesFit(
        matrix=torch.from_numpy(matrix).float(),
        scale=best if scale else 1.0,
        source_mean=torch.from_numpy(source_mean).float(),
        target_mean=torch.from_numpy(target_mean).float(),
        relative_residual=residual,
        best_scale=best,
        n_samples=int(source_rows.shape[0]),
    )


# -- 4. initialisation ----------------------------------------------------------------------------
@dataclass(frozen=True)
class InterfaceMaps:
    """Per tap, T's tap space -> S's; and S's final hidden space -> T's (scaled)."""

    input_maps: tuple[ProcrustesFit, ...]
    output_map: ProcrustesFit

    def describe(self) -> dict[str, Any]:
        return {"input": [m.describe() for m in self.input_maps], "output": self.output_map.describe()}


def fit_interface_maps(source: PooledStates, target: PooledStates) -> InterfaceMaps:
    """Procrustes maps from pooled states of the same snippets on S and T."""
    if source.text_sha256 != target.text_sha256 or source.final.shape[0] != target.final.shape[0]:
        raise SentenceMismatchError(
            f"pooled states of {source.model!r} and {target.model!r} come from different snippets "
            f"({source.final.shape[0]} vs {target.final.shape[0]}); pool one SharedText on both models."
        )
    if source.taps.shape[1] != target.taps.shape[1]:
        raise MigrationError(
            f"{source.taps.shape[1]} source taps but {target.taps.shape[1]} target taps; "
            "use as many taps on T as the module reads on S."
        )
    inputs = tuple(orthogonal_procrustes(target.taps[:, k], source.taps[:, k]) for k in range(source.taps.shape[1]))
    return InterfaceMaps(inputs, orthogonal_procrustes(source.final, target.final, scale=True))


def frozen_parameters(module: ABIModule) -> list[nn.Parameter]:
    """Everything but the interface (abi_norm, domain MLP, alpha): what a migration must not change."""
    interface = {id(p) for p in module.interface_parameters()}
    return [p for p in module.parameters() if id(p) not in interface]


def migrate_module(
    source_module: ABIModule, target_d_model: int, maps: InterfaceMaps | None, seed: int = 0
) -> ABIModule:
    """A module for T: the source's frozen part copied, the interface from ``maps``.

    ``proj_in_T = proj_in_S @ R_in`` (per tap block) reads T's taps as if they were S's. The
    projection is bias-free, so the offset between the two centred spaces cannot be represented;
    it is left to KD (the LayerNorm after ``proj_in`` makes the input's scale irrelevant, not
    its offset). ``proj_out_T = s * R_out @ proj_out_S``: a correction is a displacement of the
    final hidden state, so only the linear part of the output map applies (offsets cancel), and
    ``s`` gives it T's magnitude. ``maps=None``: a random interface (xavier, seeded by ``seed``),
    the no-Procrustes control.
    """
    config = source_module.config
    if config.per_tap_norm:
        raise MigrationError(
            "per-tap LayerNorms are d_model-sized interface weights that Procrustes does not map; "
            "migrate modules built with per_tap_norm=False (as the release's 1-tap module)."
        )
    migrated = ABIModule(replace(config, d_model=target_d_model), seed=seed)
    migrated.abi_norm.load_state_dict(source_module.abi_norm.state_dict())
    migrated.domain.load_state_dict(source_module.domain.state_dict())
    with torch.no_grad():
        migrated.alpha.copy_(source_module.alpha)
        if maps is not None:
            if len(maps.input_maps) != config.n_taps:
                raise MigrationError(f"{len(maps.input_maps)} input maps for a module with {config.n_taps} taps.")
            source_d_model = config.d_model
            for k, fit in enumerate(maps.input_maps):
                if tuple(fit.matrix.shape) != (source_d_model, target_d_model):
                    raise MigrationError(
                        f"input map {k} is {tuple(fit.matrix.shape)}, expected "
                        f"({source_d_model}, {target_d_model}) (T's taps -> S's)."
                    )
                block = source_module.proj_in.weight[:, k * source_d_model : (k + 1) * source_d_model]
                migrated.proj_in.weight[:, k * target_d_model : (k + 1) * target_d_model] = block @ fit.matrix
            output_map = maps.output_map
            if tuple(output_map.matrix.shape) != (target_d_model, source_d_model):
                raise MigrationError(
                    f"output map is {tuple(output_map.matrix.shape)}, expected ({target_d_model}, {source_d_model})."
                )
            migrated.proj_out.weight.copy_(output_map.scale * output_map.matrix @ source_module.proj_out.weight)
    migrated.eval()
    return migrated
