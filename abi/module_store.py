"""Trained modules kept on disk, keyed by everything that determines them, so a re-run trains nothing twice.

A training stage is a pure function of its starting weights, its data, its hyper-parameters and the
code that runs it. The key hashes all four: the starting state by its tensors (which covers the
module's shape, seed and any earlier stage), the data and hyper-parameters as the caller's
``identity``, and the code as the normalised import graph of the modules that define the stage
(:mod:`abi.import_graph`: comments and docstrings do not count; a report, a plot or another claim is
not in that graph, so editing one retrains nothing). A kept module is therefore reused only where
training it again would give the same module (for the same thread count, see the Limitations chapter).

Entries are written atomically and read with ``torch.load(weights_only=True)`` (tensors and one JSON
string for the stage's log), so a truncated or foreign file is retrained, never half-loaded.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from abi.import_graph import RepoIndex
from abi.paths import REPO_ROOT, cache_dir

STORE_FORMAT = 1


def state_digest(module: nn.Module) -> str:
    """sha256 over a module's named tensors (persistent parameters and buffers), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@lru_cache(maxsize=16)
def code_digest(*module_names: str) -> str:
    """sha256 over the normalised source of every library module ``module_names`` import, transitively."""
    index = RepoIndex(REPO_ROOT)
    unknown = [name for name in module_names if name not in index.modules]
    if unknown:
        raise ValueError(
            f"{unknown} are not tracked library modules; add them to git (the digest covers tracked code)."
        )
    roots = ast.parse("\n".join(f"import {name}" for name in module_names))
    digest = hashlib.sha256()
    for rel in sorted(index.modules[name] for name in index.closure([roots])):
        content = index.normalised(rel)
        digest.update(f"{rel}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def entry_path(kind: str, label: str, key: str) -> Path:
    """``.cache/modules/<kind>-<label>-<key>.pt``; the label only makes the folder readable."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
    return cache_dir() / "modules" / f"{kind}-{safe}-{key}.pt"


def entry_key(identity: dict[str, Any], module: nn.Module, code: str) -> str:
    """The key of a stage: what it was given (``identity``), where it starts (``module``) and its code."""
    document = {"format": STORE_FORMAT, "identity": identity, "start": state_digest(module), "code": code}
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _read(path: Path, module: nn.Module) -> dict[str, Any] | None:
    """The kept log after loading the kept weights into ``module``, or None (with a message) if unreadable."""
    try:
        kept = torch.load(path, map_location="cpu", weights_only=True)
        log = json.loads(kept["log"])
        module.load_state_dict(kept["state_dict"])
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError) as error:
        print(f"kept module {path.name} is unreadable ({type(error).__name__}: {error}); training it again")
        return None
    return log


def _plain(value: Any) -> Any:
    """numpy scalars and arrays in a log, as JSON numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"a stage log holds {type(value).__name__}, which JSON cannot store")


def _write(path: Path, module: nn.Module, log: dict[str, Any]) -> None:
    """Save beside the target and rename into place: a reader sees no entry or a whole one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().to("cpu").clone() for name, tensor in module.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "log": json.dumps(log, default=_plain)}, buffer)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getvalue())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def trained(
    kind: str,
    label: str,
    module: nn.Module,
    identity: dict[str, Any],
    code: str,
    train: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """Run ``train`` (which trains ``module`` in place and returns a JSON-able log) unless the same stage
    was run before; then load its weights into ``module`` instead. Returns the log with ``from_cache`` and
    ``stage_s``, the wall seconds the stage took when it was trained (kept with the module, so a warm run's
    result still says what computing it cost).

    ``identity`` must name everything besides the starting weights and ``code`` that the stage reads
    (data by content hash, hyper-parameters, the frozen backbone's fingerprint).
    """
    path = entry_path(kind, label, entry_key(identity, module, code))
    if path.is_file():
        log = _read(path, module)
        if log is not None:
            module.eval()
            print(f"{label}: {kind} read from the kept module {path.name}")
            return {**log, "from_cache": True}
    started = time.perf_counter()
    log = {**train(), "stage_s": round(time.perf_counter() - started, 3)}
    _write(path, module, log)
    return {**log, "from_cache": False}
