"""Moving a frozen domain module to another backbone: the algorithm of claim 2.

A module trained on a source model S is carried to a target model T of another architecture,
tokenizer and vocabulary. Only its interface (``proj_in``, ``proj_out``) is rebuilt; the domain
part (``abi_norm``, the domain MLP, ``alpha``) moves unchanged and stays frozen. Read top to bottom:

1. **Shared text** (:func:`draw_shared_text`): ``(context, sentence)`` snippets of held-in
   training text, the same characters for both models, each tokenized by each model's own
   tokenizer (:func:`tokenize_shared`). :func:`check_paired` refuses two token sets that were not
   made from the same text, before any model runs.
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
5. **KD calibration** (:func:`kd_calibrate`): the target's native module is the teacher;
   ``0.9 * T^2 * KL(teacher_T || student_T) + 0.1 * CE`` at temperature ``T = 2`` through T's
   frozen head, only the interface trainable; the frozen part's hash is checked after.

Every step is deterministic given its seed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor, nn
from tqdm.auto import tqdm

from abi.backbones import Backbone
from abi.data import CorpusFile
from abi.features import IGNORE_INDEX, FeatureSet
from abi.module import ABIModule, parameter_hash
from abi.paths import cache_dir
from abi.schedule import PhaseSchedule

_FORMAT = 1


class SentenceMismatchError(ValueError):
    """The two sides of a migration were not given the same shared text."""


class MigrationError(ValueError):
    """A module that cannot be migrated as asked (shape, taps, frozen part changed)."""


# -- 1. shared text -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SharedText:
    """``(context, sentence)`` snippets; the sentence is what gets pooled, the context precedes it."""

    contexts: tuple[str, ...]
    sentences: tuple[str, ...]
    origin: tuple[str, ...] = ()  # "path:line" of each snippet, for the record

    def __post_init__(self) -> None:
        if len(self.contexts) != len(self.sentences):
            raise SentenceMismatchError(f"{len(self.contexts)} contexts for {len(self.sentences)} sentences.")

    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps([self.contexts, self.sentences]).encode()).hexdigest()


def draw_shared_text(files: Sequence[CorpusFile], n: int, context_chars: int, sentence_chars: int,
                     seed: int) -> SharedText:
    """``n`` distinct snippets from ``files`` (pass the *training* split only), seeded.

    A snippet starts at a random non-blank line of a random file: the sentence is that line and the
    following ones up to ``sentence_chars`` characters (cut after the last whole line that fits,
    else at the limit); the context is the lines before it, up to ``context_chars`` characters.
    """
    if n < 1 or context_chars < 1 or sentence_chars < 1:
        raise ValueError(f"need n, context_chars, sentence_chars >= 1, got {n}, {context_chars}, {sentence_chars}.")
    candidates = [f for f in sorted(files, key=lambda f: f.path) if f.text.count("\n") >= 2]
    if not candidates:
        raise ValueError("no file with at least two lines to draw shared sentences from.")
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, int]] = set()
    contexts, sentences, origin = [], [], []
    for _ in range(50 * n):
        if len(sentences) == n:
            break
        f = int(rng.integers(len(candidates)))
        lines = candidates[f].text.splitlines(keepends=True)
        i = int(rng.integers(1, len(lines)))
        if (f, i) in seen or not lines[i].strip():
            continue
        seen.add((f, i))
        context = _tail(lines[:i], context_chars)
        sentence = _head(lines[i:], sentence_chars)
        if context.strip() and sentence.strip():
            contexts.append(context)
            sentences.append(sentence)
            origin.append(f"{candidates[f].path}:{i + 1}")
    if len(sentences) < n:
        raise ValueError(f"found only {len(sentences)} distinct snippets for n={n}; ask for fewer sentences.")
    return SharedText(tuple(contexts), tuple(sentences), tuple(origin))


def _tail(lines: list[str], limit: int) -> str:
    text = ""
    for line in reversed(lines):
        if len(text) + len(line) > limit:
            return text or line[-limit:]
        text = line + text
    return text


def _head(lines: list[str], limit: int) -> str:
    text = ""
    for line in lines:
        if len(text) + len(line) > limit:
            return text or line[:limit]
        text += line
    return text


@dataclass(frozen=True)
class TokenizedSentences:
    """One model's tokens of a :class:`SharedText`: context ids and sentence ids per snippet."""

    model: str
    text_sha256: str
    context_ids: tuple[tuple[int, ...], ...]
    sentence_ids: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return len(self.sentence_ids)

    @property
    def ids_sha256(self) -> str:
        return hashlib.sha256(json.dumps([self.context_ids, self.sentence_ids]).encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "n": len(self), "mean_context_tokens": float(np.mean([len(c) for c in
                self.context_ids])), "mean_sentence_tokens": float(np.mean([len(s) for s in self.sentence_ids]))}


def tokenize_shared(text: SharedText, tokenizer: Any, model: str) -> TokenizedSentences:
    """Tokenize context + sentence as one string (so merges at the seam are the model's own) and
    split the tokens at the first one that starts inside the sentence (character offsets)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{model}: a fast tokenizer (character offsets) is needed to split context from sentence.")
    contexts, sentences = [], []
    for k, (context, sentence) in enumerate(zip(text.contexts, text.sentences)):
        enc = tokenizer(context + sentence, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        ids, starts = enc["input_ids"], [o[0] for o in enc["offset_mapping"]]
        split = next((j for j, start in enumerate(starts) if start >= len(context)), len(ids))
        if split == 0 or split == len(ids):
            raise ValueError(f"{model}: snippet {k} has an empty context or sentence after tokenization.")
        contexts.append(tuple(ids[:split]))
        sentences.append(tuple(ids[split:]))
    return TokenizedSentences(model, text.sha256, tuple(contexts), tuple(sentences))


def check_paired(source: TokenizedSentences, target: TokenizedSentences) -> None:
    """Refuse two token sets that do not come from the same snippets (call before any model runs)."""
    if source.text_sha256 != target.text_sha256 or len(source) != len(target):
        raise SentenceMismatchError(
            f"the shared sentences differ between {source.model!r} ({len(source)} snippets, text "
            f"{source.text_sha256[:12]}) and {target.model!r} ({len(target)} snippets, text "
            f"{target.text_sha256[:12]}); "
            "tokenize one SharedText with both tokenizers."
        )


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
            if groups and len(groups[-1]) < batch_size and \
                    len(sentences.context_ids[groups[-1][0]]) == len(sentences.context_ids[i]):
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups
    order = sorted(range(n), key=lambda i: len(sentences.context_ids[i]) + len(sentences.sentence_ids[i]))
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _padded(rows: list[list[int]], pad: int) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)


@torch.no_grad()
def _compute_pooled(backbone: Backbone, sentences: TokenizedSentences, taps: tuple[int, ...],
                    batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    n, d = len(sentences), backbone.d_model
    pooled_taps, pooled_final = np.zeros((n, len(taps), d)), np.zeros((n, d))
    pad = backbone.pad_token_id
    groups = _pool_batches(sentences, backbone.is_encoder_decoder, batch_size)
    for group in tqdm(groups, desc=f"pooled states ({backbone.name})", unit="batch"):
        ctx = [list(sentences.context_ids[i]) for i in group]
        sent = [list(sentences.sentence_ids[i]) for i in group]
        if backbone.is_encoder_decoder:
            out = backbone.tap_features(_padded([[pad] + s[:-1] for s in sent], pad), taps,
                                        encoder_ids=torch.tensor(ctx, dtype=torch.long))
            spans = [(0, len(s)) for s in sent]
        else:
            out = backbone.tap_features(_padded([c + s for c, s in zip(ctx, sent)], pad), taps)
            spans = [(len(c) - 1, len(c) - 1 + len(s)) for c, s in zip(ctx, sent)]
        for row, (i, (lo, hi)) in enumerate(zip(group, spans)):
            pooled_taps[i] = out.taps[row, lo:hi].double().mean(dim=0).numpy()
            pooled_final[i] = out.final[row, lo:hi].double().mean(dim=0).numpy()
    return pooled_taps, pooled_final


def pooled_states(backbone: Backbone, sentences: TokenizedSentences, taps: Sequence[int], batch_size: int = 16,
                  root: Path | None = None) -> PooledStates:
    """Mean over the positions that predict each sentence's tokens, of the taps and the final state.

    Cached on disk (``cache_dir()/pooled``) by backbone fingerprint, taps and token ids: the same
    model's states on the same snippets are computed once, whichever pair they serve.
    """
    taps = backbone.check_taps(taps)
    if sentences.model != backbone.name:
        raise SentenceMismatchError(f"sentences tokenized for {sentences.model!r} given to {backbone.name!r}.")
    key = hashlib.sha256(json.dumps({"format": _FORMAT, "backbone": backbone.fingerprint(), "taps": list(taps),
                                     "bos_prefix": backbone.bos_prefix, "ids": sentences.ids_sha256}).encode()
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
        return {"shape": list(self.matrix.shape), "scale": self.scale, "best_scale": self.best_scale,
                "relative_residual": self.relative_residual, "explained_fraction": 1.0 - self.relative_residual**2,
                "n_samples": self.n_samples}


def orthogonal_procrustes(source: ArrayLike, target: ArrayLike, centre: bool = True,
                          scale: bool = False) -> ProcrustesFit:
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
    x = np.asarray(source, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise SentenceMismatchError(
            f"Procrustes needs paired rows: source {x.shape}, target {y.shape}; the same snippets on both sides."
        )
    if x.shape[0] < 2 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("Procrustes needs at least 2 finite paired rows.")
    mx = x.mean(axis=0) if centre else np.zeros(x.shape[1])
    my = y.mean(axis=0) if centre else np.zeros(y.shape[1])
    xc, yc = x - mx, y - my
    u, _, vt = np.linalg.svd(yc.T @ xc, full_matrices=False)
    w = u @ vt
    mapped = xc @ w.T
    best = float(np.sum(mapped * yc) / np.sum(mapped * mapped))
    residual = float(np.linalg.norm(best * mapped - yc) / np.linalg.norm(yc))
    return ProcrustesFit(torch.from_numpy(w).float(), best if scale else 1.0, torch.from_numpy(mx).float(),
                         torch.from_numpy(my).float(), residual, best, int(x.shape[0]))


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
        raise MigrationError(f"{source.taps.shape[1]} source taps but {target.taps.shape[1]} target taps; "
                             "use as many taps on T as the module reads on S.")
    inputs = tuple(orthogonal_procrustes(target.taps[:, k], source.taps[:, k]) for k in range(source.taps.shape[1]))
    return InterfaceMaps(inputs, orthogonal_procrustes(source.final, target.final, scale=True))


def frozen_parameters(module: ABIModule) -> list[nn.Parameter]:
    """Everything but the interface (abi_norm, domain MLP, alpha): what a migration must not change."""
    interface = {id(p) for p in module.interface_parameters()}
    return [p for p in module.parameters() if id(p) not in interface]


def migrate_module(source_module: ABIModule, target_d_model: int, maps: InterfaceMaps | None,
                   seed: int = 0) -> ABIModule:
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
        raise MigrationError("per-tap LayerNorms are d_model-sized interface weights that Procrustes does not map; "
                             "migrate modules built with per_tap_norm=False (as the seed's 1-tap module).")
    migrated = ABIModule(replace(config, d_model=target_d_model), seed=seed)
    migrated.abi_norm.load_state_dict(source_module.abi_norm.state_dict())
    migrated.domain.load_state_dict(source_module.domain.state_dict())
    with torch.no_grad():
        migrated.alpha.copy_(source_module.alpha)
        if maps is not None:
            if len(maps.input_maps) != config.n_taps:
                raise MigrationError(f"{len(maps.input_maps)} input maps for a module with {config.n_taps} taps.")
            d_s = config.d_model
            for k, fit in enumerate(maps.input_maps):
                if tuple(fit.matrix.shape) != (d_s, target_d_model):
                    raise MigrationError(f"input map {k} is {tuple(fit.matrix.shape)}, expected "
                                         f"({d_s}, {target_d_model}) (T's taps -> S's).")
                block = source_module.proj_in.weight[:, k * d_s:(k + 1) * d_s]
                migrated.proj_in.weight[:, k * target_d_model:(k + 1) * target_d_model] = block @ fit.matrix
            out = maps.output_map
            if tuple(out.matrix.shape) != (target_d_model, d_s):
                raise MigrationError(f"output map is {tuple(out.matrix.shape)}, expected ({target_d_model}, {d_s}).")
            migrated.proj_out.weight.copy_(out.scale * out.matrix @ source_module.proj_out.weight)
    migrated.eval()
    return migrated


# -- 5. KD calibration ----------------------------------------------------------------------------
def kd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float = 2.0,
            kl_weight: float = 0.9, ce_weight: float = 0.1) -> tuple[Tensor, dict[str, float]]:
    """``kl_weight * T^2 * KL(teacher_T || student_T) + ce_weight * CE(student, next token)``.

    KL is the mean over positions of the divergence between the softmaxes at temperature ``T``
    (teacher first: the student is pulled towards the teacher's whole distribution); the ``T^2``
    factor keeps gradient sizes comparable across temperatures (Hinton et al.). CE is at
    temperature 1 over positions with a known next token (none known: 0). Logits ``[P, V]``.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} logits "
                         "differ in shape; both must be the target's logits.")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    log_q = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = torch.log_softmax(teacher_logits.float().detach() / temperature, dim=-1)
    n = log_p[..., 0].numel()
    kl = nn.functional.kl_div(log_q, log_p, log_target=True, reduction="sum") / n
    valid = labels != IGNORE_INDEX
    ce = (nn.functional.cross_entropy(student_logits.float()[valid], labels[valid]) if valid.any()
          else student_logits.sum() * 0.0)
    loss = kl_weight * temperature**2 * kl + ce_weight * ce
    return loss, {"kl": float(kl.detach()), "ce": float(ce.detach())}


@dataclass(frozen=True)
class KDConfig:
    """KD calibration settings (seed: 1,200 steps, 0.9 KL at T=2 + 0.1 CE)."""

    steps: int
    lr: float = 1e-3
    positions: int = 32  # (window, position) pairs per step, drawn uniformly from the cached windows
    temperature: float = 2.0
    kl_weight: float = 0.9
    ce_weight: float = 0.1
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    head_dtype: str = "float32"  # "bfloat16": the frozen head's product in bf16 (training signal only)
    train: Literal["interface", "all"] = "interface"

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"a KD calibration needs at least 1 step, got {self.steps!r}; the 0-step arm "
                             "(Procrustes only) is the migrated module without calling kd_calibrate.")
        if self.positions < 1 or self.lr <= 0 or self.temperature <= 0:
            raise ValueError("KD needs positions >= 1, lr > 0 and temperature > 0.")
        if self.train not in ("interface", "all"):
            raise ValueError(f"train must be 'interface' or 'all', got {self.train!r}.")
        head_precision(self.head_dtype)


def head_precision(name: str) -> torch.dtype | None:
    """``"float32"`` -> None (the model's own head), ``"bfloat16"`` -> ``torch.bfloat16``."""
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"head_dtype must be 'float32' or 'bfloat16', got {name!r}.")
    return None if name == "float32" else torch.bfloat16


@dataclass
class KDLog:
    """Per-step total loss, KL and CE parts, learning rates, and the frozen part's hashes."""

    losses: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    ce: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    trained: str = "interface"
    frozen_hash_before: str = ""
    frozen_hash_after: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"losses": self.losses, "kl": self.kl, "ce": self.ce, "lrs": self.lrs, "trained": self.trained,
                "frozen_hash_before": self.frozen_hash_before, "frozen_hash_after": self.frozen_hash_after,
                "frozen_unchanged": self.frozen_hash_before == self.frozen_hash_after}


@contextmanager
def _no_grad_for(parameters: list[nn.Parameter]) -> Iterator[None]:
    """Switch gradients off for ``parameters`` (none is even computed), restoring the flags after."""
    flags = [p.requires_grad for p in parameters]
    for p in parameters:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(parameters, flags):
            p.requires_grad_(flag)


def kd_calibrate(student: ABIModule, teacher_corrections: Tensor, backbone: Backbone, features: FeatureSet,
                 config: KDConfig, seed: int = 0, desc: str = "KD calibration") -> KDLog:
    """Distil the teacher (its cached corrections on ``features``) into ``student`` through the frozen head.

    Each step draws ``config.positions`` (window, position) pairs; the teacher's logits are
    ``head(final + teacher_correction)``, the student's ``head(final + student(taps))``. With
    ``train="interface"`` only proj_in/proj_out are updated and the hash of everything else is
    checked afterwards (a change raises); ``train="all"`` is the original code's variant.
    AdamW, linear warm-up then a constant rate, gradient clipping.
    """
    n_windows, seq_len = len(features), features.windows.seq_len
    if tuple(teacher_corrections.shape[:2]) != (n_windows, seq_len):
        raise ValueError(f"teacher corrections {tuple(teacher_corrections.shape)} do not cover the "
                         f"{n_windows} x {seq_len} cached positions.")
    if teacher_corrections.shape[-1] != student.config.d_model:
        raise MigrationError(f"the student writes d_model={student.config.d_model} corrections, the teacher "
                             f"{teacher_corrections.shape[-1]}; build the student for the target backbone.")
    dtype = head_precision(config.head_dtype)
    interface_only = config.train == "interface"
    trainable = student.interface_parameters() if interface_only else list(student.parameters())
    frozen = frozen_parameters(student)
    log = KDLog(trained=config.train, frozen_hash_before=parameter_hash(frozen))
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    schedule = PhaseSchedule.constant(config.steps, config.lr, round(config.warmup_fraction * config.steps))
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(config.positions)
    student.train()
    with _no_grad_for(frozen if interface_only else []):
        for step in tqdm(range(config.steps), desc=desc, unit="step"):
            for group in optimizer.param_groups:
                group["lr"] = schedule.lr(step)
            windows = torch.randint(0, n_windows, (config.positions,), generator=generator)
            positions = torch.randint(0, seq_len, (config.positions,), generator=generator)
            taps, final, labels = features.batch(windows)
            taps, final, labels = taps[rows, positions], final[rows, positions], labels[rows, positions]
            with torch.no_grad():
                teacher_logits = backbone.head(final + teacher_corrections[windows, positions], dtype=dtype)
            student_logits = backbone.head(final + student(taps), dtype=dtype)
            loss, parts = kd_loss(student_logits, teacher_logits, labels, config.temperature, config.kl_weight,
                                  config.ce_weight)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss {loss.item()} at step {step}; lower kd_lr.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()
            log.losses.append(loss.item())
            log.kl.append(parts["kl"])
            log.ce.append(parts["ce"])
            log.lrs.append(schedule.lr(step))
    student.eval()
    log.frozen_hash_after = parameter_hash(frozen)
    if interface_only and log.frozen_hash_after != log.frozen_hash_before:
        raise MigrationError(f"{desc}: the frozen domain part changed during an interface-only calibration.")
    return log
