"""The domain corpora as a ``datasets.DatasetDict``: the form the Hugging Face ecosystem hands a corpus out in.

The experiments read token streams from :func:`abi.data.token_stream`; this module gives a user the
same split in the form they expect: ``datasets.load_from_disk(path)`` of a DatasetDict with
train/validation/test, one row per file (``package``, ``version``, ``licence``, ``path``, ``text``), rows
in the experiments' order and with their text (the dialect renamed for ``python-dialect``).
tests/test_corpus_dataset.py proves that tokenizing it gives byte-identical token ids.

* The DatasetDict is saved under ``cache_dir()/datasets/<domain>-<12 hex of the split identity>``, a
  checked cache entry like the others (:mod:`abi.cache_integrity`): every file hashed, rebuilt if damaged.
* Tokenization is ``Dataset.map(batched=True)`` with datasets' fingerprint cache, which writes
  ``cache-<fingerprint>.arrow`` beside the split's data and never checks it: a flipped bit is used as
  is, and a file cut at a record-batch boundary silently loses rows. So each cache file gets a sha256
  sidecar (``cache-<fingerprint>.json``), checked before every ``map`` as the project's cache rule requires
  (a cache file without one, e.g. from a user's own ``map`` on the cached folder, is deleted too).
* datasets' own cache folder is ``cache_dir()/huggingface/datasets`` (unless ``HF_DATASETS_CACHE`` is set), offline.

Command line: ``python -m abi.corpus_dataset export --domain python --out DIR`` (``make dataset``).
``--domain python-dialect`` exports the dialect claim 1 tests (its cpu profile's words and seed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from abi.paths import cache_dir

os.environ.setdefault("HF_DATASETS_CACHE", str(cache_dir() / "huggingface" / "datasets"))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from abi.cache_integrity import (  # noqa: E402
    HASH_NAME,
    MANIFEST,
    BadEntry,
    atomic_write_json,
    build_lock,
    check_digests,
    discard,
    load_checked,
    read_json,
    record_digests,
    staging_dir,
)
from abi.data import SPLITS, Corpus, CorpusSplit, package_of  # noqa: E402
from abi.experiments.common import DOMAINS, check_domain, domain_split  # noqa: E402
from abi.profiles import resolve_parameters  # noqa: E402

datasets.config.HF_DATASETS_CACHE = Path(os.environ["HF_DATASETS_CACHE"])  # also when datasets was imported first
datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True  # the project never reaches a hub

_FORMAT = 1
_IDENTITY = "abi_identity.json"
# One shard per split: a few MB each, and datasets 5.2 writes no shard for an empty split, then cannot load it.
ONE_SHARD = {name: 1 for name in SPLITS}
UNKNOWN_LICENCE = "unknown (not recorded in the corpus identity)"
FEATURES = datasets.Features(
    {name: datasets.Value("string") for name in ("package", "version", "licence", "path", "text")}
)
TOKEN_FEATURES = datasets.Features(
    {**{k: v for k, v in FEATURES.items() if k != "text"}, "input_ids": datasets.List(datasets.Value("int32"))}
)


def dataset_identity(domain: str, corpus: Corpus, split: CorpusSplit) -> dict[str, Any]:
    """What the saved DatasetDict is: the domain, the corpus (packages, licences, file hashes) and the split."""
    return {"format": _FORMAT, "domain": domain, "corpus": corpus.identity, "split": split.identity()}


def dataset_key(identity: dict[str, Any]) -> str:
    """12 hex digits of sha256 over the identity: the folder name's suffix."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def split_dataset(corpus: Corpus, split: CorpusSplit) -> datasets.DatasetDict:
    """One row per file of each split, in the split's order (path order), in memory."""
    packages = {p["name"]: p for p in corpus.identity.get("packages", [])}

    def rows(name: str) -> dict[str, list[str]]:
        files = split.files(name)
        known = [packages.get(f.package, {}) for f in files]
        return {
            "package": [f.package for f in files],
            "version": [p.get("version") or _version_of(f.path) for f, p in zip(files, known)],
            "licence": [p.get("license") or UNKNOWN_LICENCE for p in known],
            "path": [f.path for f in files],
            "text": [f.text for f in files],
        }

    info = datasets.DatasetInfo(
        description=f"{corpus.identity.get('name', 'corpus')}: one row per source file, split by a salted hash of "
        f"its path ({split.level} level, salt {split.salt!r}); each row's licence is its package's.",
        features=FEATURES,
    )
    return datasets.DatasetDict(
        {name: datasets.Dataset.from_dict(rows(name), info=info, split=name) for name in SPLITS}
    )


def _version_of(path: str) -> str:
    """The ``<version>`` of a ``<name>-<version>/...`` corpus path ("" when the folder has none)."""
    folder = path.split("/", 1)[0]
    return folder[len(package_of(path)) + 1 :]


def dataset_dir(domain: str, corpus: Corpus, split: CorpusSplit, root: Path | None = None) -> Path:
    """``<root>/<domain>-<key>``, ``root`` defaulting to ``cache_dir()/datasets``."""
    key = dataset_key(dataset_identity(domain, corpus, split))
    return Path(root if root is not None else cache_dir() / "datasets") / f"{domain}-{key}"


def saved_split_dataset(
    domain: str, corpus: Corpus, split: CorpusSplit, root: Path | None = None
) -> datasets.DatasetDict:
    """The split as a checked ``save_to_disk`` entry (:func:`dataset_dir`), loaded from it (memory-mapped)."""
    identity = dataset_identity(domain, corpus, split)
    target = dataset_dir(domain, corpus, split, root)

    def build() -> None:
        with staging_dir(target) as staging:
            split_dataset(corpus, split).save_to_disk(str(staging), num_shards=ONE_SHARD)
            atomic_write_json(staging / _IDENTITY, identity)
            names = [str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file()]
            atomic_write_json(staging / MANIFEST, {HASH_NAME: record_digests(staging, names)})
            os.replace(staging, target)

    return load_checked(target, lambda: _load_checked_dict(target), build)


def _load_checked_dict(target: Path) -> datasets.DatasetDict:
    check_digests(target, read_json(target / MANIFEST).get(HASH_NAME))
    try:
        return datasets.load_from_disk(str(target))
    except Exception as error:  # whatever datasets raises on a damaged folder: rebuild it, never use it
        raise BadEntry(f"datasets cannot load it ({type(error).__name__}: {error})") from error


def corpus_dataset(
    domain: str = "python",
    split_level: str = "file",
    dialect_words: int = 0,
    dialect_seed: int = 0,
    root: Path | None = None,
) -> datasets.DatasetDict:
    """The domain's train/validation/test split exactly as the experiments use it
    (:func:`abi.experiments.common.domain_split`), as a DatasetDict saved under ``root``."""
    check_domain(domain, dialect_words)
    corpus, split = domain_split(split_level, domain, dialect_words, dialect_seed)
    return saved_split_dataset(domain, corpus, split, root)


def _encode(batch: dict[str, list], tokenizer: Any) -> dict[str, list]:
    """``token_stream``'s call: no special tokens, so the file separator is the only one added."""
    return {"input_ids": tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]}


def tokenize_split(
    dataset: datasets.Dataset, tokenizer: Any, batch_size: int = 32, checked: bool = True
) -> datasets.Dataset:
    """``dataset.map(batched=True)`` to ``input_ids`` (text dropped), cached by datasets' fingerprint beside
    the split's data; with ``checked`` each cache file's sha256 is recorded once written and checked before
    every ``map`` (:func:`check_map_caches`), under a lock on the split folder."""

    def run() -> datasets.Dataset:
        return dataset.map(
            _encode,
            batched=True,
            batch_size=batch_size,
            fn_kwargs={"tokenizer": tokenizer},
            remove_columns=["text"],
            features=TOKEN_FEATURES,
            desc=f"tokenizing {dataset.split or 'split'}",
        )

    if len(dataset) == 0:  # datasets' map skips an empty split without adding the column
        return datasets.Dataset.from_dict({k: [] for k in TOKEN_FEATURES}, features=TOKEN_FEATURES, split=dataset.split)
    if not checked or not dataset.cache_files:  # in memory: datasets caches nothing
        return run()
    folder = Path(dataset.cache_files[0]["filename"]).parent
    with build_lock(folder / "tokens"):
        check_map_caches(folder)
        tokenized = run()
        cache = Path(tokenized.cache_files[0]["filename"])
        if not cache.with_suffix(".json").exists():
            atomic_write_json(cache.with_suffix(".json"), {HASH_NAME: record_digests(folder, [cache.name])})
        return tokenized


def check_map_caches(folder: Path) -> None:
    """Delete (with a warning) every ``cache-*.arrow`` of a split folder that does not match its recorded
    sha256, or records none, before ``map`` can load it: datasets may crash on a damaged file, or use it."""
    for cache in sorted(folder.glob("cache-*.arrow")):
        try:
            check_digests(folder, read_json(cache.with_suffix(".json")).get(HASH_NAME))
        except BadEntry as bad:
            discard(cache, str(bad), [cache.with_suffix(".json")])


def tokenize_dataset(
    dataset: datasets.DatasetDict, tokenizer: Any, batch_size: int = 32, checked: bool = True
) -> datasets.DatasetDict:
    """Every split through :func:`tokenize_split`."""
    return datasets.DatasetDict(
        {name: tokenize_split(ds, tokenizer, batch_size, checked) for name, ds in dataset.items()}
    )


def dataset_token_stream(tokenized: datasets.Dataset, separator_id: int) -> np.ndarray:
    """The files' ids in path order, each followed by ``separator_id``, as one int64 array: exactly
    :func:`abi.data.token_stream`'s stream (the caller picks the separator, usually the EOS id)."""
    paths = tokenized.with_format("arrow")["path"].to_pylist()
    if paths != sorted(paths):
        tokenized = tokenized.select(np.argsort(np.array(paths, dtype=object), kind="stable"))
    ids = tokenized.with_format("arrow")["input_ids"]
    flat = pc.list_flatten(ids).to_numpy().astype(np.int64)
    ends = np.cumsum(pc.list_value_length(ids).to_numpy(zero_copy_only=False))
    return np.insert(flat, ends, np.int64(separator_id))


def separator_of(tokenizer: Any, separator_id: int | None = None) -> int:
    """``token_stream``'s default separator: the tokenizer's EOS id."""
    separator = tokenizer.eos_token_id if separator_id is None else separator_id
    if separator is None:
        raise ValueError("the tokenizer has no eos_token_id; pass separator_id explicitly")
    return int(separator)


def export(
    out: Path, domain: str = "python", split_level: str = "file", dialect_words: int = 0, dialect_seed: int = 0
) -> Path:
    """Save the domain's DatasetDict and its identity (``abi_identity.json``) to ``out``, a new or empty folder."""
    check_domain(domain, dialect_words)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; pass a new --out folder.")
    corpus, split = domain_split(split_level, domain, dialect_words, dialect_seed)
    saved_split_dataset(domain, corpus, split).save_to_disk(str(out), num_shards=ONE_SHARD)
    atomic_write_json(out / _IDENTITY, dataset_identity(domain, corpus, split))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m abi.corpus_dataset", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export_parser = commands.add_parser("export", help="save a domain's DatasetDict for datasets.load_from_disk")
    export_parser.add_argument("--domain", default="python", help=f"one of: {', '.join(DOMAINS)}")
    export_parser.add_argument("--out", type=Path, required=True, help="a new or empty folder")
    export_parser.add_argument("--split-level", default="file", choices=["file", "package"])
    from abi.experiments import core_nib  # registers claim 1's profiles

    claim_1 = resolve_parameters(core_nib.CLAIM, "cpu")  # the dialect claim 1 tests, unless told otherwise
    export_parser.add_argument(
        "--dialect-words",
        type=int,
        default=claim_1["dialect_words"],
        help="python-dialect only: renamed words (default: claim 1's cpu profile, %(default)s)",
    )
    export_parser.add_argument(
        "--dialect-seed", type=int, default=claim_1["dialect_seed"], help="python-dialect only: seed (%(default)s)"
    )
    args = parser.parse_args(argv)
    try:  # export() refuses an unknown domain (check_domain) or a used folder before any work
        out = export(args.out, args.domain, args.split_level, args.dialect_words, args.dialect_seed)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    dataset = datasets.load_from_disk(str(out))
    sizes = ", ".join(f"{name} {len(dataset[name])} files" for name in SPLITS)
    print(f"{args.domain}: {sizes} -> {out}\nload it with: datasets.load_from_disk({str(out)!r})")


if __name__ == "__main__":
    main()
