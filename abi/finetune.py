"""Backbone updates: a full fine-tune of a backbone on English prose (claim 4).

The release fine-tunes its backbone for 1,000 steps on WikiText-2 and then applies an ABI module
trained on the old backbone zero-shot. Here the update is a seeded, deterministic full fine-tune
(AdamW, linear warm-up then constant LR, gradient clipping) on token windows of the Wikipedia
prose corpus (:mod:`abi.prose`, the offline stand-in for WikiText-2).

* The update works on a deep copy of the Hugging Face model: the original :class:`Backbone`
  (often the shared, lru-cached instance of ``load_backbone``) stays bit-identical, which is
  checked by fingerprint before and after.
* The result is a *new* backbone: its own name (``<base>+prose-ft-<key>``), an identity that
  records the base fingerprint, the configuration and the data hash, and its own fingerprint,
  so every cache keyed by fingerprint (tap features) keeps the two apart.
* By default nothing protects the module. ``protect_weight > 0`` adds a stability term, the MSE
  between a representation of the model being updated and that of the original backbone on the
  same batch (the original is frozen, so computing it per batch equals a cache of pre-update
  references). ``protect_target="module"`` is the release's term: the *module's* hidden state
  (``module.bottleneck``: its input projection and norm) of the updated taps against that of the
  original taps, the module frozen and passed as ``protect_module`` (its parameter hash is part
  of the configuration, so the cache keeps updates for different modules apart).
  ``protect_target="taps"`` is this project's earlier variant: the raw tap hidden states, whose
  scale is the model's, so a good weight depends on the model. The update runs in training
  mode, so for models with dropout (T5) the term is not zero even at step 0 (the original
  backbone is read in eval mode).
* A NaN or infinite loss stops with :class:`abi.train.TrainingDivergedError` and leaves no
  cache entry behind. A finished update is cached under ``cache_dir()/finetuned`` keyed by
  everything it depends on, so a re-run loads it instead of re-training; with
  ``checkpoint_every`` an interrupted update resumes from its last checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from abi.backbones import Backbone
from abi.data import split_corpus, token_stream
from abi.features import IGNORE_INDEX, Windows
from abi.paths import cache_dir
from abi.progress import tqdm
from abi.prose import load_prose_corpus
from abi.train import TrainingDivergedError

_FORMAT = 1
SPLITS = ("train", "validation", "test")
# What the stability term keeps close: the module's hidden state (the release's) or the raw tap states.
PROTECT_TARGETS = ("module", "taps")


class FinetuneCacheError(RuntimeError):
    """A cached update whose weights no longer match the fingerprint recorded with them."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides the updated weights (with the base weights and the data)."""

    steps: int
    lr: float = 1e-4
    batch_windows: int = 4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    seed: int = 0
    protect_weight: float = 0.0
    protect_taps: tuple[int, ...] = ()
    protect_target: str = "taps"
    protect_module_sha256: str = ""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_windows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FinetuneConfig.{name} must be a positive integer, got {value!r}.")
        if not isinstance(self.warmup_steps, int) or not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must be an integer in [0, steps={self.steps}], got {self.warmup_steps!r}.")
        for name in ("lr", "grad_clip"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"FinetuneConfig.{name} must be a positive finite number, got {value!r}.")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}.")
        if not (math.isfinite(self.protect_weight) and self.protect_weight >= 0):
            raise ValueError(f"protect_weight must be >= 0, got {self.protect_weight!r}.")
        if self.protect_weight > 0 and not self.protect_taps:
            raise ValueError("a protected update (protect_weight > 0) needs protect_taps: the module's tap layers.")
        if self.protect_target not in PROTECT_TARGETS:
            raise ValueError(
                f"protect_target must be one of {', '.join(PROTECT_TARGETS)} (module: the release's term), "
                f"got {self.protect_target!r}."
            )
        if self.protect_weight > 0 and self.protect_target == "module" and not self.protect_module_sha256:
            raise ValueError("protect_target='module' needs protect_module_sha256: the frozen module's parameter hash.")
        object.__setattr__(self, "protect_taps", tuple(int(t) for t in self.protect_taps))

    @property
    def protected(self) -> bool:
        return self.protect_weight > 0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["protect_taps"] = list(self.protect_taps)
        return out

    def lr_at(self, step: int) -> float:
        """Linear warm-up over ``warmup_steps``, then constant."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        return self.lr


@dataclass
class FinetuneRun:
    """An updated backbone and how it was made."""

    backbone: Backbone
    key: str
    config: FinetuneConfig
    losses: list[float] = field(default_factory=list)
    protect_losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    from_cache: bool = False

    def log(self) -> dict[str, Any]:
        return {"losses": self.losses, "protect_losses": self.protect_losses, "lrs": self.lrs}


# -- data --------------------------------------------------------------------------------------
@dataclass
class ProseStreams:
    """Token streams of the prose splits (split unit: the article) and their identities."""

    streams: dict[str, np.ndarray]
    identity: dict[str, Any]


def load_prose_streams(backbone: Backbone) -> ProseStreams:
    """Tokenize the pinned Wikipedia prose per split with the backbone's tokenizer (cached)."""
    corpus = load_prose_corpus()
    split = split_corpus(corpus, level="file")
    streams = {name: token_stream(split.files(name), backbone.tokenizer) for name in SPLITS}
    identity = {
        "corpus": corpus.identity,
        "split": split.identity(),
        "tokens": {name: int(len(stream)) for name, stream in streams.items()},
    }
    return ProseStreams(streams, identity)


# -- losses ------------------------------------------------------------------------------------
def _logits(model: nn.Module, backbone: Backbone, batch: Windows) -> Tensor:
    if backbone.is_encoder_decoder:
        return model(input_ids=batch.encoder_ids, decoder_input_ids=batch.input_ids, use_cache=False).logits
    return model(input_ids=batch.input_ids, use_cache=False).logits


def _lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORE_INDEX)


def update_losses(
    trainee: Backbone, base: Backbone, batch: Windows, config: FinetuneConfig, module: nn.Module | None = None
) -> tuple[Tensor, Tensor]:
    """Next-token loss of the model being updated, and the protection term (0 when unprotected).

    The protection term is the mean squared difference between the module's hidden state
    (``protect_target="module"``, the release's) or the raw tap states (``"taps"``) of the model
    being updated and those of the original backbone on the same batch.
    """
    if not config.protected:
        return _lm_loss(_logits(trainee.model, trainee, batch), batch.labels), torch.zeros(())
    with trainee.capture_taps(config.protect_taps) as captured:
        logits = _logits(trainee.model, trainee, batch)
    taps = torch.stack([captured[f"tap{t}"] for t in config.protect_taps], dim=-2).float()
    with torch.no_grad():
        target = base.tap_features(batch.input_ids, config.protect_taps, encoder_ids=batch.encoder_ids).taps
        if config.protect_target == "module":
            target = module.bottleneck(target)
    current = module.bottleneck(taps) if config.protect_target == "module" else taps
    return _lm_loss(logits, batch.labels), nn.functional.mse_loss(current, target)


def _check_protect_module(config: FinetuneConfig, module: nn.Module | None) -> None:
    """The release's protected update needs the frozen module whose hash its configuration names."""
    if not (config.protected and config.protect_target == "module"):
        return
    if module is None:
        raise ValueError(
            "protect_target='module' needs protect_module: the frozen module trained on the base backbone."
        )
    from abi.module import parameter_hash

    if parameter_hash(module) != config.protect_module_sha256:
        raise ValueError(
            "protect_module does not match the configuration's protect_module_sha256; pass the same module."
        )


def token_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-position NLL ``[B, T]`` (0 where the label is ignored); flattened to ``[B*T, V]`` rows,
    which is several times faster than cross-entropy over the class axis of ``[B, V, T]``."""
    losses = nn.functional.cross_entropy(
        logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return losses.view(labels.shape)


@torch.no_grad()
def window_nll(
    backbone: Backbone, windows: Windows, batch_windows: int = 8, desc: str = "perplexity"
) -> tuple[list[float], list[int]]:
    """Summed next-token NLL and token count per window, from the model's own forward logits."""
    nll: list[float] = []
    counts: list[int] = []
    for start in tqdm(range(0, len(windows), batch_windows), desc=f"{desc} ({backbone.name})", unit="batch"):
        batch = windows.select(slice(start, start + batch_windows))
        logits = backbone.model_logits(batch.input_ids, encoder_ids=batch.encoder_ids)
        nll.extend(token_nll(logits, batch.labels).sum(dim=1).double().tolist())
        counts.extend((batch.labels != IGNORE_INDEX).sum(dim=1).tolist())
    return nll, counts


# -- the update --------------------------------------------------------------------------------
def update_key(base: Backbone, windows: Windows, config: FinetuneConfig) -> str:
    """Hash of everything the updated weights depend on: base weights, data, configuration."""
    payload = {
        "format": _FORMAT,
        "base": base.fingerprint(),
        "windows": windows.content_hash(),
        "config": config.to_dict(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _updated_backbone(
    base: Backbone, model: nn.Module, key: str, config: FinetuneConfig, windows: Windows, data: dict[str, Any] | None
) -> Backbone:
    kind = f"protected ({config.protect_target}) prose fine-tune" if config.protected else "prose fine-tune"
    spec = dataclasses.replace(
        base.spec,
        name=f"{base.name}+prose-ft-{key[:10]}",
        description=f"{base.spec.description}; {kind}, {config.steps} steps",
    )
    identity = {
        "source": "finetune",
        "base_name": base.name,
        "base_fingerprint": base.fingerprint(),
        "base_identity": base.identity,
        "update": kind,
        "config": config.to_dict(),
        "data_sha256": windows.content_hash(),
        "data": data or {},
        "key": key,
    }
    return Backbone(spec, model, base.tokenizer, identity, correction_site=base.correction_site)


def _cache_folder(base: Backbone, key: str, root: Path | None) -> Path:
    return (root or cache_dir() / "finetuned") / base.name.replace("/", "_") / key


def finetune_backbone(
    base: Backbone,
    windows: Windows,
    config: FinetuneConfig,
    *,
    data: dict[str, Any] | None = None,
    cache: bool = True,
    root: Path | None = None,
    checkpoint_every: int = 0,
    desc: str = "backbone update",
    protect_module: nn.Module | None = None,
) -> FinetuneRun:
    """Fine-tune a deep copy of ``base`` on ``windows``; returns the updated backbone.

    ``windows`` are token windows in the backbone's layout (causal chunks, or prefix +
    continuation for T5); batches are drawn from them with a generator seeded by
    ``config.seed``, dropout uses the same seed, so a run is deterministic. ``data`` (corpus
    identities) goes into the new backbone's identity. ``checkpoint_every > 0`` saves model,
    optimizer and random states every so many steps so an interrupted run resumes exactly.
    ``protect_module`` is the frozen module of the release's protected update.
    """
    if config.protected:
        base.check_taps(config.protect_taps)
    _check_protect_module(config, protect_module)
    if len(windows) == 0:
        raise ValueError("no fine-tuning windows; the prose train split is empty or the windows are too long.")
    before = base.fingerprint(recompute=True)
    key = update_key(base, windows, config)
    folder = _cache_folder(base, key, root)
    if cache and (folder / "meta.json").is_file():
        return _load_cached(base, folder, key, config, windows, data)
    partial = folder.with_name(folder.name + ".partial")
    try:
        run = _train(
            base,
            windows,
            config,
            key,
            data,
            partial if checkpoint_every else None,
            checkpoint_every,
            desc,
            protect_module,
        )
    except TrainingDivergedError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if base.fingerprint(recompute=True) != before:
        raise RuntimeError(f"the original backbone {base.name!r} changed during its update; the run is invalid.")
    if cache:
        _save(run, folder, partial)
    else:
        shutil.rmtree(partial, ignore_errors=True)
    return run


def _train(
    base: Backbone,
    windows: Windows,
    config: FinetuneConfig,
    key: str,
    data: dict[str, Any] | None,
    partial: Path | None,
    checkpoint_every: int,
    desc: str,
    protect_module: nn.Module | None = None,
) -> FinetuneRun:
    model = copy.deepcopy(base.model)
    trainee = _updated_backbone(base, model, key, config, windows, data)  # freezes; re-enabled below
    model.requires_grad_(True)
    parameters = list(model.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.lr_at(0), weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    run = FinetuneRun(trainee, key, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        start = _resume(partial, model, optimizer, generator, run) if partial else 0
        model.train()
        for step in tqdm(
            range(start, config.steps), initial=start, total=config.steps, desc=f"{desc} ({base.name})", unit="step"
        ):
            lr = config.lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = windows.select(torch.randint(0, len(windows), (config.batch_windows,), generator=generator))
            lm_loss, protect_loss = update_losses(trainee, base, batch, config, protect_module)
            loss = lm_loss + config.protect_weight * protect_loss if config.protected else lm_loss
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"{desc} of {base.name!r}: the loss became {loss.item()} at step {step}; lower the fine-tuning "
                    f"learning rate (now {config.lr:g}) or the protection weight. Nothing was cached and no result "
                    "was written, so earlier results are untouched."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(parameters, config.grad_clip)
            optimizer.step()
            run.losses.append(lm_loss.item())
            run.protect_losses.append(protect_loss.item())
            run.lrs.append(lr)
            if partial and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < config.steps:
                _checkpoint(partial, step + 1, model, optimizer, generator, run)
    run.backbone = _updated_backbone(base, model, key, config, windows, data)  # frozen, eval mode
    return run


def _checkpoint(
    partial: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    run: FinetuneRun,
) -> None:
    partial.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "rng": torch.get_rng_state(),
        "log": run.log(),
    }
    tmp = partial / "checkpoint.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, partial / "checkpoint.pt")


def _resume(
    partial: Path, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator, run: FinetuneRun
) -> int:
    path = partial / "checkpoint.pt"
    if not path.is_file():
        return 0
    state = torch.load(path, weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["rng"])
    run.losses, run.protect_losses, run.lrs = (list(state["log"][k]) for k in ("losses", "protect_losses", "lrs"))
    print(f"[abi] resuming the backbone update from step {state['step']} ({path})", flush=True)
    return int(state["step"])


def _save(run: FinetuneRun, folder: Path, partial: Path) -> None:
    """Weights + meta into the ``.partial`` folder, then renamed into place (atomic)."""
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "checkpoint.pt").unlink(missing_ok=True)
    save_model(run.backbone.model, str(partial / "model.safetensors"))
    meta = {
        "format": _FORMAT,
        "key": run.key,
        "name": run.backbone.name,
        "fingerprint": run.backbone.fingerprint(),
        "identity": run.backbone.identity,
        "log": run.log(),
    }
    (partial / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)


def _load_cached(
    base: Backbone, folder: Path, key: str, config: FinetuneConfig, windows: Windows, data: dict[str, Any] | None
) -> FinetuneRun:
    meta = json.loads((folder / "meta.json").read_text())
    model = copy.deepcopy(base.model)
    load_model(model, str(folder / "model.safetensors"))
    backbone = _updated_backbone(base, model, key, config, windows, data)
    if backbone.fingerprint() != meta["fingerprint"]:
        raise FinetuneCacheError(
            f"{folder}: the cached weights do not match their recorded fingerprint; "
            "delete the folder to re-run the update."
        )
    log = meta["log"]
    return FinetuneRun(
        backbone=backbone,
        key=key,
        config=config,
        losses=log["losses"],
        protect_losses=log["protect_losses"],
        lrs=log["lrs"],
        from_cache=True,
    )
