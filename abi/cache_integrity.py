"""The one rule every on-disk cache follows (token streams, tap features, de-quantized weights).

A cache is only worth having if a damaged entry can never be used, so:

* every entry records the sha256 of its files and is checked before use. sha256, not blake2b:
  measured on this project's CPUs (SHA-NI), hashlib's sha256 reads 1.2 GB/s, blake2b 0.57 GB/s.
  A file's hash is computed once per process while the file is unchanged (same inode, size and
  times), so large entries (model weights, tap features) cost one read per process;
* a bad entry (hash mismatch, truncated or missing file, unreadable metadata) is named in a
  :class:`CacheIntegrityWarning` with what was wrong, deleted and rebuilt, never used;
* whoever builds an entry holds ``<entry>.lock`` (``filelock``), so two runs never build one entry
  at once: the second waits, then loads and checks what the first built;
* metadata is written to a temporary file and renamed into place, so a kill never leaves half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from filelock import FileLock, Timeout

HASH_NAME = "sha256"
MANIFEST = "abi_integrity.json"

T = TypeVar("T")

# (device, inode, size, mtime, ctime) -> digest: a file is hashed once per process until it changes.
_DIGESTS: dict[tuple[int, ...], str] = {}


class CacheIntegrityWarning(UserWarning):
    """A cache entry failed its check; the warning names it and says what was wrong."""


class BadEntry(Exception):
    """Raised by a cache's check: the message says why the entry cannot be used."""


class CacheRebuildError(RuntimeError):
    """An entry still fails its check right after being rebuilt: the source itself is wrong."""


def _stat_key(path: Path) -> tuple[int, ...]:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_digest(path: Path) -> str:
    """sha256 of a file, remembered for this process while the file stays unchanged."""
    before = _stat_key(path)
    if before in _DIGESTS:
        return _DIGESTS[before]
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, HASH_NAME).hexdigest()
    if _stat_key(path) == before:  # changed while being read: do not remember a mixture
        _DIGESTS[before] = digest
    return digest


def forget_digests() -> None:
    """Forget remembered hashes, as a new process would (tests, or after repairing a cache by hand)."""
    _DIGESTS.clear()


def record_digests(folder: Path, names: Iterable[str]) -> dict[str, str]:
    """``{name: sha256}`` of the named files in ``folder``, to store in the entry's metadata."""
    return {name: file_digest(folder / name) for name in sorted(names)}


def check_digests(folder: Path, recorded: Any) -> None:
    """Raise :class:`BadEntry` unless every recorded file exists with its recorded hash."""
    if not isinstance(recorded, dict) or not recorded:
        raise BadEntry("it records no content hash (written by an older version, or its metadata was damaged)")
    for name, expected in sorted(recorded.items()):
        path = folder / name
        if not path.is_file():
            raise BadEntry(f"{name} is missing")
        actual = file_digest(path)
        if actual != expected:
            raise BadEntry(
                f"{name} has {HASH_NAME} {actual[:16]}... but {expected[:16]}... was recorded "
                f"({path.stat().st_size} bytes now): the file was damaged or truncated"
            )


def write_manifest(folder: Path) -> None:
    """Record the hash of every file of a folder entry in its ``abi_integrity.json``."""
    names = [p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST]
    atomic_write_json(folder / MANIFEST, {HASH_NAME: record_digests(folder, names)})


def check_manifest(folder: Path) -> None:
    """Raise :class:`BadEntry` unless the folder's files match its ``abi_integrity.json``."""
    check_digests(folder, read_json(folder / MANIFEST).get(HASH_NAME))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a metadata file, or :class:`BadEntry` saying why there is none."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadEntry(f"{path.name} is missing") from None
    except (OSError, ValueError) as error:
        raise BadEntry(f"{path.name} is unreadable ({type(error).__name__}: {error})") from None
    if not isinstance(doc, dict):
        raise BadEntry(f"{path.name} holds {type(doc).__name__}, not a JSON object")
    return doc


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file renamed into place: readers see the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, doc: dict[str, Any], indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(doc, indent=indent))


def save_array(path: Path, array: np.ndarray, meta: dict[str, Any]) -> None:
    """A one-array entry (write it under its lock): ``path`` (``.npy``) beside ``path.with_suffix(".json")``,
    which holds ``meta`` and the array file's hash. The metadata is written first and the array
    renamed into place last, so a visible ``.npy`` always has its metadata."""
    _clear_leftovers(path.parent, f".{path.stem}.*")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npy", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, array)
        atomic_write_json(path.with_suffix(".json"), {**meta, HASH_NAME: {path.name: file_digest(Path(tmp))}}, 1)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_array(path: Path) -> np.ndarray:
    """The array of a :func:`save_array` entry, or :class:`BadEntry` if it does not match its hash."""
    check_digests(path.parent, read_json(path.with_suffix(".json")).get(HASH_NAME))
    try:
        return np.load(path)
    except (OSError, ValueError) as error:
        raise BadEntry(f"numpy cannot read it ({error})") from error


@contextlib.contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A fresh per-run folder beside ``target`` (call under its lock), removed unless renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(target.parent, f".{target.name}.partial-*")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    os.chmod(staging, 0o755)  # mkdtemp makes it private; the entry it becomes should not be
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _clear_leftovers(folder: Path, pattern: str) -> None:
    """Remove temporary files of killed builds; only called under the entry's lock, so none is live."""
    for item in folder.glob(pattern):
        shutil.rmtree(item) if item.is_dir() else item.unlink(missing_ok=True)


def discard(path: Path, reason: str, companions: Sequence[Path] = ()) -> None:
    """Warn that an entry is unusable and why, then delete it (and its companion files)."""
    warnings.warn(
        f"cache entry {path} is unusable: {reason}; deleting it and rebuilding", CacheIntegrityWarning, stacklevel=3
    )
    for item in (path, *companions):
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink(missing_ok=True)


@contextlib.contextmanager
def build_lock(entry: Path) -> Iterator[None]:
    """Hold ``<entry>.lock`` while building or repairing ``entry``; say so when another run holds it."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(entry.with_name(entry.name + ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"[abi] another run is building {entry}; waiting for it...", flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def load_checked(entry: Path, load: Callable[[], T], build: Callable[[], None], companions: Sequence[Path] = ()) -> T:
    """``load()`` a checked entry, building it first if it is missing or bad.

    ``load`` raises :class:`BadEntry` for an unusable entry; ``build`` writes ``entry`` anew (it is
    absent when ``build`` runs). A bad entry is judged only under the lock, since another run may
    be writing it; if it is still bad right after a rebuild, :class:`CacheRebuildError` says why.
    """
    if entry.exists():
        with contextlib.suppress(BadEntry):
            return load()
    with build_lock(entry):
        if entry.exists():
            try:
                return load()
            except BadEntry as bad:
                discard(entry, str(bad), companions)
        build()
        try:
            return load()
        except BadEntry as bad:
            raise CacheRebuildError(f"{entry} was rebuilt from its source but is still unusable: {bad}") from bad
