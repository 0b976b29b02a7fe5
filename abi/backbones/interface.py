"""One interface over frozen Hugging Face language models, so the ABI module never knows which
model it sits on.

Conventions (the same for every architecture):

* taps are indexed like Hugging Face ``output_hidden_states``: tap ``i`` (1-based) of the stack
  that predicts the next token (decoder-only: the model's layers; T5: the decoder's blocks) is the
  output of block ``i``, except the last tap ``L``, which is the state *after* the final norm
  (GPT-2 ``ln_f``, Llama/Gemma ``norm``, T5 ``final_layer_norm``), as the model's own
  ``hidden_states[L]`` is and as the release reads it;
* a model registered with ``bos_prefix`` (Gemma, which degrades badly without it) gets its BOS
  token prepended to every window of a decoder-only run, and that position is dropped from every
  output: windows cut from the middle of a token stream keep their length and meaning;
* the cached *final state* (``TapOutput.final``) is the output of the last block, before the final
  norm, for every family; :meth:`Backbone.logits` turns it (plus an optional ABI correction) into
  logits.

Where the correction is added is the backbone's ``correction_site``:

* ``"after_final_norm"`` (the release, the default): ``logits = head(norm(final) + correction)``,
  the correction added to the state the LM head reads (the model's ``last_hidden_state``);
* ``"before_final_norm"`` (this project's first site, kept as an arm of claim 1):
  ``logits = head(norm(final + correction))``; the pre-norm state is about 20x larger, so the
  same correction moves the logits far less.

``head`` is the LM head (T5: after the ``d_model**-0.5`` scaling of its tied embeddings; Gemma:
then its logit soft-cap). A test checks that ``logits(final)`` reproduces the model's own logits.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from abi.backbones.registry import BackboneSpec
from abi.sites import CORRECTION_SITES, DEFAULT_CORRECTION_SITE, check_correction_site

__all__ = [
    "CORRECTION_SITES",
    "DEFAULT_CORRECTION_SITE",
    "Backbone",
    "TapIndexError",
    "TapOutput",
    "check_correction_site",
]


class TapIndexError(ValueError):
    """Raised for tap layers that the model does not have."""


@dataclass
class TapOutput:
    """Hidden states of one batch: taps ``[B, T, K, d]`` and the last block's output ``[B, T, d]``
    (before the final norm, whatever the correction site)."""

    taps: Tensor
    final: Tensor


def _block_output(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


class Backbone:
    """A frozen language model with tap access and its own output head."""

    def __init__(
        self,
        spec: BackboneSpec,
        model: PreTrainedModel,
        tokenizer: Any,
        identity: dict[str, Any],
        correction_site: str = DEFAULT_CORRECTION_SITE,
    ):
        self.spec = spec
        self.correction_site = check_correction_site(correction_site)
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.tokenizer = tokenizer
        self.identity = {"name": spec.name, "family": spec.family, **identity}
        config = model.config
        self.is_encoder_decoder = spec.is_encoder_decoder
        self.d_model: int = (
            config.d_model
            if self.is_encoder_decoder
            else config.hidden_size
            if hasattr(config, "hidden_size")
            else config.n_embd
        )
        self.vocab_size: int = model.get_output_embeddings().weight.shape[0]
        self.n_layers: int = len(self._blocks())
        self._softcap: float | None = getattr(config, "final_logit_softcapping", None)
        self._fingerprint: str | None = None
        self._head_copies: dict[torch.dtype, tuple] = {}
        self.bos_prefix = spec.bos_prefix and not self.is_encoder_decoder
        if self.bos_prefix and tokenizer.bos_token_id is None:
            raise ValueError(f"{spec.name!r} is registered with bos_prefix but its tokenizer has no BOS token.")

    @property
    def name(self) -> str:
        return self.spec.name

    def at_site(self, correction_site: str) -> Backbone:
        """The same frozen model (shared, not copied) with the correction added at another site."""
        view = copy.copy(self)
        view.correction_site = check_correction_site(correction_site)
        return view

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    # -- architecture plumbing -------------------------------------------------------------
    def _blocks(self) -> nn.ModuleList:
        family, model = self.spec.family, self.model
        if family == "t5":
            return model.decoder.block
        if family == "gpt2":
            return model.transformer.h
        return model.model.layers

    def _final_norm(self) -> nn.Module:
        """The norm between the last block and the LM head (T5: the decoder's ``final_layer_norm``)."""
        if self.spec.family == "t5":
            return self.model.decoder.final_layer_norm
        if self.spec.family == "gpt2":
            return self.model.transformer.ln_f
        return self.model.model.norm

    def check_taps(self, taps: Sequence[int]) -> tuple[int, ...]:
        """Validate 1-based tap layers against this model, before any long work starts."""
        taps = tuple(int(t) for t in taps)
        valid = f"{self.name!r} has layers 1..{self.n_layers}"
        example = list(range(max(1, self.n_layers - 2), self.n_layers + 1))
        if not taps:
            raise TapIndexError(f"at least one tap layer is needed; {valid}, e.g. taps={example}.")
        bad = [t for t in taps if not 1 <= t <= self.n_layers]
        if bad:
            raise TapIndexError(f"tap layer(s) {bad} are outside the model: {valid}; choose taps such as {example}.")
        if len(set(taps)) != len(taps):
            raise TapIndexError(f"tap layers {list(taps)} contain duplicates; list each layer once ({valid}).")
        return taps

    # -- forward passes ----------------------------------------------------------------------
    @contextmanager
    def capture_taps(self, taps: tuple[int, ...]) -> Iterator[dict[str, Tensor]]:
        """While open, every forward pass leaves the tap states (``tap<N>``, indexed like the model's
        ``hidden_states``: the last one after the final norm) and the last block's output (``final``)
        in the yielded dict: the tap features, and the protected update's reference states."""
        captured: dict[str, Tensor] = {}
        blocks = self._blocks()

        def keep(key: str):
            return lambda _m, _i, out: captured.__setitem__(key, _block_output(out))

        handles = [
            (self._final_norm() if t == self.n_layers else blocks[t - 1]).register_forward_hook(keep(f"tap{t}"))
            for t in taps
        ]
        handles.append(blocks[-1].register_forward_hook(keep("final")))
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    def _run_stack(self, input_ids: Tensor, encoder_ids: Tensor | None) -> None:
        """Run only the hidden-state stack (no LM head: the logits are not needed for features)."""
        if self.is_encoder_decoder:
            if encoder_ids is None:
                raise ValueError(f"{self.name!r} is an encoder-decoder: pass encoder_ids (the prefix) too.")
            encoded = self.model.encoder(input_ids=encoder_ids).last_hidden_state
            self.model.decoder(input_ids=input_ids, encoder_hidden_states=encoded, use_cache=False)
        elif self.spec.family == "gpt2":
            self.model.transformer(input_ids=input_ids, use_cache=False)
        else:
            self.model.model(input_ids=input_ids, use_cache=False)

    def _with_bos(self, input_ids: Tensor) -> Tensor:
        """``input_ids`` with the BOS token first when the model needs it (see the module docstring)."""
        if not self.bos_prefix:
            return input_ids
        bos = torch.full_like(input_ids[:, :1], self.tokenizer.bos_token_id)
        return torch.cat([bos, input_ids], dim=1)

    @torch.no_grad()
    def tap_features(self, input_ids: Tensor, taps: Sequence[int], encoder_ids: Tensor | None = None) -> TapOutput:
        """Hidden states of the tap layers and the final hidden state for a batch of windows.

        ``input_ids`` are the tokens whose next token is predicted: the window for decoder-only
        models, the shifted-right decoder input for T5 (whose prefix goes in ``encoder_ids``).
        """
        taps = self.check_taps(taps)
        with self.capture_taps(taps) as captured:
            self._run_stack(self._with_bos(input_ids), encoder_ids)
        first = 1 if self.bos_prefix else 0
        stacked = torch.stack([captured[f"tap{t}"][:, first:] for t in taps], dim=-2)
        return TapOutput(taps=stacked.float(), final=captured["final"][:, first:].float())

    def correction_space(self, final: Tensor) -> Tensor:
        """The state a correction is added to, from the last block's output: ``norm(final)`` at the
        release's site, ``final`` itself before the norm (what Procrustes aligns ``proj_out`` with)."""
        return self._final_norm()(final) if self.correction_site == "after_final_norm" else final

    def logits(self, final: Tensor, correction: Tensor | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """Logits of the frozen model with ``correction`` added at its correction site.

        ``final`` is the last block's output (:class:`TapOutput`); ``correction=None`` gives the bare
        model's own logits. ``dtype``: see :meth:`head`.
        """
        norm = self._final_norm()
        if correction is None:
            hidden = norm(final)
        elif self.correction_site == "after_final_norm":
            hidden = norm(final) + correction
        else:
            hidden = norm(final + correction)
        return self.head(hidden, dtype=dtype)

    def head(self, hidden: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Frozen output step from the state after the final norm: T5's ``d_model**-0.5`` scaling, the
        LM head, Gemma's logit soft-cap.

        ``dtype`` (e.g. ``torch.bfloat16``) runs only the vocabulary projection in that precision,
        with a copy of the output weights made once and kept (casting a 262,144 x 640 matrix at
        every call would cost more than the product it saves); the logits come back as float32.
        Meant for training signals on CPUs with fast bf16 matrix products. Evaluation keeps the
        default (``None``: the model's own float32 weights).
        """
        if self.is_encoder_decoder and self.model.config.tie_word_embeddings:
            hidden = hidden * (self.d_model**-0.5)
        output = self.model.get_output_embeddings()
        if dtype is None:
            logits = output(hidden)
        else:
            weight, bias = self._low_precision_head(dtype)
            logits = nn.functional.linear(hidden.to(dtype), weight, bias).float()
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def _low_precision_head(self, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """The output projection's weights cast to ``dtype``, recast only if the weights change."""
        output = self.model.get_output_embeddings()
        stamp = (output.weight.data_ptr(), output.weight._version)
        cached = self._head_copies.get(dtype)
        if cached is None or cached[0] != stamp:
            bias = output.bias.detach().to(dtype) if getattr(output, "bias", None) is not None else None
            cached = (stamp, output.weight.detach().to(dtype), bias)
            self._head_copies[dtype] = cached
        return cached[1], cached[2]

    @torch.no_grad()
    def model_logits(self, input_ids: Tensor, encoder_ids: Tensor | None = None) -> Tensor:
        """The model's own forward logits; used by tests to check :meth:`head`."""
        if self.is_encoder_decoder:
            return self.model(input_ids=encoder_ids, decoder_input_ids=input_ids, use_cache=False).logits
        logits = self.model(input_ids=self._with_bos(input_ids), use_cache=False).logits
        return logits[:, 1:] if self.bos_prefix else logits

    # -- provenance ----------------------------------------------------------------------------
    def fingerprint(self, recompute: bool = False) -> str:
        """SHA-256 over every parameter and buffer: proves the backbone never changed.

        Memoised, since the weights are frozen; ``recompute=True`` re-hashes the live weights
        (what the before/after checks use).
        """
        if self._fingerprint is not None and not recompute:
            return self._fingerprint
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
        self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        """Identity recorded in every result file."""
        return {
            **self.identity,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "vocab_size": self.vocab_size,
            "encoder_decoder": self.is_encoder_decoder,
            "n_parameters": sum(p.numel() for p in self.model.parameters()),
        }
