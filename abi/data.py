"""The pinned, offline Python-code corpus, its deterministic split, and token windows.

The domain corpus is the ``.py`` source of pinned PyPI sdists (``CODE_CORPUS``), fetched once
with pip into ``cache_dir()/corpora/python-code`` and identified by hash, because the
interpreter's own stdlib differs between machines. Files are split train/validation/test by a
salted hash of their path, so the split needs no stored list and is recorded by its hash.
Pretrained code models have probably seen this public code; held-out files guard against our
own training, not against theirs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import torch

from abi.cache_integrity import load_array, load_checked, save_array
from abi.paths import cache_dir
from abi.progress import tqdm

Split = Literal["train", "validation", "test"]
Level = Literal["file", "package"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
DEFAULT_SALT = "abi-split-v1"
MAX_FILE_BYTES = 300_000  # larger .py files are generated tables, not code people write
_MANIFEST = "abi_manifest.json"
_FORMAT = 1


@dataclass(frozen=True)
class CorpusPackage:
    """One pinned sdist; ``sdist_sha256`` (when set) makes a re-release on PyPI fail loudly."""

    name: str
    version: str
    license: str
    sdist_sha256: str = ""


CODE_CORPUS: tuple[CorpusPackage, ...] = (
    CorpusPackage(
        "requests", "2.32.3", "Apache-2.0", "55365417734eb18255590a9ff9eb97e9e1da868d4ccd6402399eaf68af20a760"
    ),
    CorpusPackage("flask", "3.0.3", "BSD-3-Clause", "ceb27b0af3823ea2737928a4d99d125a06175b8512c445cbd9a9ce200ef76842"),
    CorpusPackage("click", "8.1.7", "BSD-3-Clause", "ca9853ad459e787e2192211578cc907e7594e294c7ccc834310722b41b9ca6de"),
    CorpusPackage(
        "jinja2", "3.1.4", "BSD-3-Clause", "4a3aee7acbbe7303aede8e9648d13b8bf88a429282aa6122a993f0ac800cb369"
    ),
    CorpusPackage(
        "itsdangerous", "2.2.0", "BSD-3-Clause", "e0050c0b7da1eea53ffaf149c0cfbb5c6e2e2b69c4bef22c81fa6eb73e5f6173"
    ),
    CorpusPackage(
        "more-itertools", "10.3.0", "MIT", "e5d93ef411224fbcef366a6e8ddc4c5781bc6359d43412a65dd5964e46111463"
    ),
    CorpusPackage(
        "packaging",
        "24.1",
        "Apache-2.0 OR BSD-2-Clause",
        "026ed72c8ed3fcce5bf8950572258698927fd1dbda10a5e981cdf0ac37f4f002",
    ),
    CorpusPackage(
        "toolz", "0.12.1", "BSD-3-Clause", "ecca342664893f177a13dac0e6b41cbd8ac25a358e5f215316d43e2100224f4d"
    ),
    CorpusPackage("h11", "0.14.0", "MIT", "8f19fbbe99e72420ff35c00b27a34cb9937e902a8b810e2c88300c6f0a3b699d"),
    CorpusPackage("pluggy", "1.5.0", "MIT", "2cffa88e94fdc978c4c574f15f9e59b7f4201d439195c3715ca9e2486f1d0cf1"),
    CorpusPackage("cachetools", "5.3.3", "MIT", "ba29e2dfa0b8b556606f097407ed1aa62080ee108ab0dc5ec9d6a723a007d105"),
    CorpusPackage("tabulate", "0.9.0", "MIT", "0095b12bf5966de529c0feb1fa08671671b3368eec77d7ef7ab114be2c068b3c"),
)


@dataclass(frozen=True)
class CorpusFile:
    """One source file; ``path`` is ``<name>-<version>/<path in the sdist>``, POSIX style."""

    path: str
    package: str
    text: str
    sha256: str


@dataclass(frozen=True)
class Corpus:
    """Files sorted by path plus the identity a result file records."""

    files: list[CorpusFile]
    identity: dict[str, Any]


class CorpusTooShortError(ValueError):
    """The token stream cannot hold the windows asked for."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def default_corpus_root() -> Path:
    """Where the code corpus lives: ``cache_dir()/corpora/python-code`` (never committed)."""
    return cache_dir() / "corpora" / "python-code"


def _pip_download(package: CorpusPackage, dest: Path) -> Path:
    """Download the sdist with this interpreter's pip; sdists, so no platform-specific wheel."""
    spec = f"{package.name}=={package.version}"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "-q",
        spec,
        "-d",
        str(dest),
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"pip could not download the sdist of {spec} (exit {proc.returncode}): "
            f"{proc.stderr.strip()[-800:]}\nFetching the code corpus needs access to the Python "
            "package registry (PyPI); on an offline machine, set ABI_CACHE_DIR to a cache "
            "directory already populated by fetch_code_corpus()."
        )
    archives = [p for p in dest.iterdir() if p.name.endswith(".tar.gz")]
    if len(archives) != 1:
        raise RuntimeError(
            f"expected one .tar.gz sdist of {spec} in {dest}, found "
            f"{sorted(p.name for p in dest.iterdir())}; check the pin in CODE_CORPUS"
        )
    return archives[0]


def _inner_path(member: str) -> str | None:
    """Path below the sdist's top folder, or None for files outside it or escaping it."""
    parts = PurePosixPath(member).parts
    if len(parts) < 2 or member.startswith("/") or ".." in parts:
        return None
    return "/".join(parts[1:])


def _skip_reason(data: bytes) -> str:
    """Why a ``.py`` file stays out of the corpus ("" keeps it)."""
    if len(data) > MAX_FILE_BYTES:
        return f"{len(data)} bytes > {MAX_FILE_BYTES}"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8"
    return ""


def _extract_python(archive: Path, target: Path) -> tuple[list[dict], list[dict]]:
    """Write the sdist's regular ``.py`` files we keep; return (kept, skipped) records."""
    kept: dict[str, dict] = {}
    skipped = []
    with tarfile.open(archive, "r:gz") as tf:
        for member in tf.getmembers():
            rel = _inner_path(member.name)
            if not member.isfile() or rel is None or not rel.endswith(".py"):
                continue
            data = tf.extractfile(member).read()
            if reason := _skip_reason(data):
                skipped.append({"path": rel, "reason": reason})
                continue
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_bytes(data)
            kept[rel] = {"path": rel, "sha256": _sha256(data)}
    return [kept[rel] for rel in sorted(kept)], skipped


def _read_manifest(package: CorpusPackage, target: Path) -> dict | None:
    """The manifest of a complete, untouched package folder, else None (refetch)."""
    try:
        manifest = json.loads((target / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    same = (
        manifest.get("format") == _FORMAT
        and manifest.get("name") == package.name
        and manifest.get("version") == package.version
        and package.sdist_sha256 in ("", manifest.get("sdist_sha256"))
    )
    if not same:
        return None
    for record in manifest["files"]:
        path = target / record["path"]
        if not path.is_file() or _sha256(path.read_bytes()) != record["sha256"]:
            return None
    return manifest


def _fetch_package(package: CorpusPackage, root: Path) -> None:
    """Download and extract one sdist into a staging folder, then rename it into place."""
    target = root / f"{package.name}-{package.version}"
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=root))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            archive = _pip_download(package, Path(tmp))
            digest = _sha256(archive.read_bytes())
            if package.sdist_sha256 and digest != package.sdist_sha256:
                raise RuntimeError(
                    f"{archive.name} has sha256 {digest}, but CODE_CORPUS pins "
                    f"{package.sdist_sha256}; the registry served another file; check the pin"
                )
            kept, skipped = _extract_python(archive, staging)
        manifest = {
            "format": _FORMAT,
            "name": package.name,
            "version": package.version,
            "license": package.license,
            "sdist": archive.name,
            "sdist_sha256": digest,
            "files": kept,
            "skipped": skipped,
        }
        (staging / _MANIFEST).write_text(json.dumps(manifest, indent=1))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_code_corpus(packages: Sequence[CorpusPackage] = CODE_CORPUS, root: Path | None = None) -> Path:
    """Make sure every pinned package is extracted under ``root``; idempotent and resumable."""
    root = Path(root) if root is not None else default_corpus_root()
    root.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if _read_manifest(p, root / f"{p.name}-{p.version}") is None]
    for package in tqdm(missing, desc="fetching code corpus", unit="pkg", disable=not missing):
        _fetch_package(package, root)
    return root


def _package_files(package: CorpusPackage, root: Path) -> tuple[list[CorpusFile], dict]:
    folder = f"{package.name}-{package.version}"
    manifest = _read_manifest(package, root / folder)
    if manifest is None:
        raise RuntimeError(
            f"{root / folder} is incomplete or was modified; delete it and call fetch_code_corpus() again"
        )
    files = []
    for record in manifest["files"]:
        text = (root / folder / record["path"]).read_bytes().decode("utf-8")
        files.append(CorpusFile(f"{folder}/{record['path']}", package.name, text, record["sha256"]))
    return files, manifest


def load_code_corpus(packages: Sequence[CorpusPackage] = CODE_CORPUS, root: Path | None = None) -> Corpus:
    """The code corpus, fetched if needed, with an identity that pins every file by hash."""
    root = fetch_code_corpus(packages, root)
    files, described = [], []
    for package in packages:
        package_files, manifest = _package_files(package, root)
        files.extend(package_files)
        described.append(
            {
                "name": package.name,
                "version": package.version,
                "license": package.license,
                "sdist_sha256": manifest["sdist_sha256"],
            }
        )
    files.sort(key=lambda f: f.path)
    identity = {
        "name": "python-code",
        "packages": described,
        "n_files": len(files),
        "n_chars": sum(len(f.text) for f in files),
        "sha256": _files_hash(files),
    }
    return Corpus(files, identity)


def _files_hash(files: Sequence[CorpusFile]) -> str:
    """sha256 over ``path NUL sha256 LF`` lines in path order: content and layout together."""
    lines = "".join(f"{f.path}\0{f.sha256}\n" for f in sorted(files, key=lambda f: f.path))
    return _sha256(lines.encode())


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-9:
        raise ValueError(
            f"fractions must be 3 non-negative numbers (train, validation, test) "
            f"summing to 1, got {tuple(fractions)}; e.g. pass (0.8, 0.1, 0.1)"
        )
    return values  # type: ignore[return-value]


def package_of(path: str) -> str:
    """Package name of a corpus path: its first folder without the ``-<version>`` suffix,
    so that a version bump does not move a package to another split."""
    first = path.split("/", 1)[0]
    head, sep, tail = first.rpartition("-")
    return head if sep and tail[:1].isdigit() else first


def split_of(
    path: str, level: Level = "file", fractions: Sequence[float] = DEFAULT_FRACTIONS, salt: str = DEFAULT_SALT
) -> Split:
    """Split of one path: ``u = sha256(salt + key)[:8] / 2**64`` bucketed by cumulative
    fractions, where key is the path (level "file") or ``package_of(path)`` (level "package").
    A pure function of the path, so adding a file never moves another one."""
    train, validation, _ = _check_fractions(fractions)
    if level not in ("file", "package"):
        raise ValueError(f"level must be 'file' or 'package', got {level!r}")
    key = path if level == "file" else package_of(path)
    u = int.from_bytes(hashlib.sha256((salt + key).encode()).digest()[:8], "big") / 2**64
    if u < train:
        return "train"
    return "validation" if u < train + validation else "test"


@dataclass(frozen=True)
class CorpusSplit:
    """Train/validation/test files of one corpus, and the parameters that produced them."""

    train: list[CorpusFile]
    validation: list[CorpusFile]
    test: list[CorpusFile]
    level: Level
    fractions: tuple[float, float, float]
    salt: str
    corpus_sha256: str

    def files(self, split: Split) -> list[CorpusFile]:
        """Files of a split by name (for loops over ``SPLITS``)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return getattr(self, split)

    def manifest_hash(self, split: Split) -> str:
        """sha256 over the split's sorted paths, one per line: what a result file records."""
        return _sha256("".join(f"{p}\n" for p in sorted(f.path for f in self.files(split))).encode())

    def identity(self) -> dict[str, Any]:
        """Parameters and per-split sizes and hashes, for result files."""
        splits = {
            name: {
                "n_files": len(self.files(name)),
                "n_chars": sum(len(f.text) for f in self.files(name)),
                "manifest_sha256": self.manifest_hash(name),
            }
            for name in SPLITS
        }
        return {
            "level": self.level,
            "fractions": list(self.fractions),
            "salt": self.salt,
            "corpus_sha256": self.corpus_sha256,
            "splits": splits,
        }


def split_corpus(
    corpus: Corpus, level: Level = "file", fractions: Sequence[float] = DEFAULT_FRACTIONS, salt: str = DEFAULT_SALT
) -> CorpusSplit:
    """Partition the corpus by ``split_of``; every file lands in exactly one split."""
    checked = _check_fractions(fractions)
    parts: dict[str, list[CorpusFile]] = {name: [] for name in SPLITS}
    for f in corpus.files:
        parts[split_of(f.path, level, checked, salt)].append(f)
    return CorpusSplit(
        parts["train"],
        parts["validation"],
        parts["test"],
        level,
        checked,
        salt,
        corpus.identity.get("sha256", _files_hash(corpus.files)),
    )


def tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    """Name, class, vocabulary size and vocabulary hash: enough to key a token cache."""
    vocab = sorted(tokenizer.get_vocab().items())
    return {
        "name_or_path": str(tokenizer.name_or_path),
        "class": type(tokenizer).__name__,
        "vocab_size": len(vocab),
        "vocab_sha256": _sha256(json.dumps(vocab).encode()),
    }


def _encode_files(files: Sequence[CorpusFile], tokenizer: Any, separator_id: int, batch: int = 32) -> np.ndarray:
    pieces: list[np.ndarray] = []
    separator = np.array([separator_id], dtype=np.int64)
    with tqdm(total=len(files), desc="tokenizing", unit="file", disable=len(files) < 50) as bar:
        for i in range(0, len(files), batch):
            texts = [f.text for f in files[i : i + batch]]
            ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
            for row in ids:
                pieces += [np.asarray(row, dtype=np.int64), separator]
            bar.update(len(texts))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


def token_stream(files: Sequence[CorpusFile], tokenizer: Any, separator_id: int | None = None) -> np.ndarray:
    """Files in path order, each followed by ``separator_id`` (default: EOS), as one int64 array.

    Cached as a plain ``.npy`` under ``cache_dir()/tokens`` (a flat array is all windows need),
    keyed by sha256 of the tokenizer
    identity, the separator and the files' paths and hashes; its ``.json`` records the array's
    sha256, checked on load (a damaged entry is rebuilt, see :mod:`abi.cache_integrity`).
    ``datasets``' ``.map`` cache gives the same ids (:mod:`abi.corpus_dataset`, which hands the corpora
    out as a DatasetDict) but is no faster cold (benchmarks/window_preparation.py), keys entries by a
    pickle of the tokenizer and never checks them: a flipped bit in its Arrow file is used as is.
    """
    if separator_id is None:
        separator_id = tokenizer.eos_token_id
    if separator_id is None:
        raise ValueError("the tokenizer has no eos_token_id; pass separator_id explicitly")
    ordered = sorted(files, key=lambda f: f.path)
    key_doc = {
        "format": _FORMAT,
        "tokenizer": tokenizer_identity(tokenizer),
        "separator_id": int(separator_id),
        "files": _files_hash(ordered),
    }
    key = _sha256(json.dumps(key_doc, sort_keys=True).encode())
    path = cache_dir() / "tokens" / f"{key}.npy"

    def build() -> None:
        stream = _encode_files(ordered, tokenizer, int(separator_id))
        save_array(path, stream, {**key_doc, "n_files": len(ordered), "n_tokens": int(stream.size)})

    return load_checked(path, lambda: load_array(path), build, companions=[path.with_suffix(".json")])


def _too_short(n_tokens: int, needed: int, what: str) -> CorpusTooShortError:
    return CorpusTooShortError(
        f"the token stream has {n_tokens} tokens but {what} needs {needed}; use fewer or "
        "shorter windows, or a bigger split (more packages or a larger split fraction)"
    )


def _check_window_args(window_len: int, n_windows: int) -> None:
    if window_len < 1 or n_windows < 0:
        raise ValueError(f"need window_len >= 1 and n_windows >= 0, got {window_len}, {n_windows}")


def sample_starts(n_tokens: int, window_len: int, n_windows: int, seed: int) -> np.ndarray:
    """Uniform window starts, exactly the original NIB draw (numpy ``default_rng(seed)``)."""
    _check_window_args(window_len, n_windows)
    if n_tokens < window_len:
        raise _too_short(n_tokens, window_len, f"one window of {window_len} tokens")
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_tokens - window_len + 1, size=n_windows).astype(np.int64)


def tiled_starts(n_tokens: int, window_len: int, n_windows: int) -> np.ndarray:
    """Consecutive non-overlapping starts from 0, so training sees every token at most once."""
    _check_window_args(window_len, n_windows)
    if n_windows * window_len > n_tokens:
        raise _too_short(n_tokens, n_windows * window_len, f"{n_windows} tiled windows of {window_len} tokens")
    return np.arange(n_windows, dtype=np.int64) * window_len


def decoder_windows(stream: np.ndarray, starts: np.ndarray, window_len: int) -> torch.Tensor:
    """``[N, window_len]`` LongTensor of ``stream[start:start + window_len]`` per start."""
    starts = np.asarray(starts, dtype=np.int64)
    if starts.size and (starts.min() < 0 or starts.max() + window_len > len(stream)):
        raise ValueError(
            f"window starts must lie in [0, {len(stream) - window_len}] for windows "
            f"of {window_len} tokens; draw them with sample_starts/tiled_starts"
        )
    index = starts[:, None] + np.arange(window_len, dtype=np.int64)[None, :]
    return torch.from_numpy(np.asarray(stream, dtype=np.int64)[index].reshape(-1, window_len))


@dataclass(frozen=True)
class PrefixLMBatch:
    """Encoder-decoder windows: the encoder reads a prefix, the decoder predicts the rest."""

    encoder_ids: torch.Tensor
    decoder_input_ids: torch.Tensor
    labels: torch.Tensor


def prefix_lm_windows(
    stream: np.ndarray, starts: np.ndarray, prefix_len: int, cont_len: int, decoder_start_id: int
) -> PrefixLMBatch:
    """Split ``prefix_len + cont_len`` windows; decoder inputs are the labels shifted right
    with ``decoder_start_id`` first (the T5 convention, which uses the pad token)."""
    if prefix_len < 0 or cont_len < 1:
        raise ValueError(f"need prefix_len >= 0 and cont_len >= 1, got {prefix_len}, {cont_len}")
    windows = decoder_windows(stream, starts, prefix_len + cont_len)
    labels = windows[:, prefix_len:].clone()
    start = torch.full((labels.shape[0], 1), decoder_start_id, dtype=torch.long)
    decoder_input_ids = torch.cat([start, labels[:, :-1]], dim=1)
    return PrefixLMBatch(windows[:, :prefix_len].clone(), decoder_input_ids, labels)
