"""Token windows and the tap-feature cache.

The backbone is frozen, so the tap hidden states of a window never change: they are computed
once, stored memory-mapped on disk (keyed by backbone fingerprint + taps + window tokens), and
every training stage reads them from there. The original recomputed the whole backbone at every
step of every stage; ``benchmarks/`` measures what the cache saves. An interrupted extraction
resumes from the last finished batch. Entries are hashed, checked, locked while built and
rebuilt when damaged (:mod:`abi.cache_integrity`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from abi.backbones import Backbone
from abi.cache_integrity import (
    HASH_NAME,
    BadEntry,
    atomic_write_json,
    check_digests,
    discard,
    load_checked,
    read_json,
    record_digests,
)
from abi.paths import cache_dir
from abi.progress import tqdm

IGNORE_INDEX = -100
_FORMAT = 2  # 2: taps indexed like hidden_states (last one after the final norm); final = last block output
_PROGRESS = "progress.json"


@dataclass(frozen=True)
class Windows:
    """A batch of token windows in the layout the backbone needs.

    ``input_ids`` are the tokens at the predicting positions; ``labels`` the next token at each
    position (``IGNORE_INDEX`` where the window does not contain it); ``encoder_ids`` the prefix
    of an encoder-decoder (prefix-LM mode), else ``None``.
    """

    input_ids: Tensor
    labels: Tensor
    encoder_ids: Tensor | None = None

    @classmethod
    def causal(cls, tokens: Tensor) -> Windows:
        """Decoder-only layout: position t predicts token t+1 of the same window."""
        tokens = tokens.long()
        ignore = torch.full_like(tokens[:, :1], IGNORE_INDEX)
        return cls(input_ids=tokens, labels=torch.cat([tokens[:, 1:], ignore], dim=1))

    @classmethod
    def prefix_lm(cls, encoder_ids: Tensor, decoder_input_ids: Tensor, labels: Tensor) -> Windows:
        """Encoder-decoder layout: the encoder reads a prefix, the decoder predicts the continuation."""
        return cls(input_ids=decoder_input_ids.long(), labels=labels.long(), encoder_ids=encoder_ids.long())

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def select(self, index: slice | Tensor) -> Windows:
        enc = self.encoder_ids[index] if self.encoder_ids is not None else None
        return Windows(self.input_ids[index], self.labels[index], enc)

    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for tensor in (self.input_ids, self.labels, self.encoder_ids):
            if tensor is not None:
                digest.update(str(tuple(tensor.shape)).encode())
                digest.update(tensor.numpy().astype(np.int64).tobytes())
        return digest.hexdigest()


class FeatureSet:
    """Cached tap features of a window set: ``taps [N, T, K, d]``, ``final [N, T, d]``, labels."""

    def __init__(self, directory: Path, windows: Windows, taps: tuple[int, ...]):
        self.directory = directory
        self.windows = windows
        self.tap_layers = taps
        self._taps = np.load(directory / "taps.npy", mmap_mode="r")
        self._final = np.load(directory / "final.npy", mmap_mode="r")

    def __len__(self) -> int:
        return len(self.windows)

    @property
    def key(self) -> str:
        return self.directory.name

    def first(self, n_windows: int) -> FeatureSet:
        """The first ``n_windows`` windows, sharing the cached arrays (a calibration-data dose)."""
        if not 1 <= n_windows <= len(self):
            raise ValueError(
                f"asked for the first {n_windows} of {len(self)} cached windows; "
                f"choose 1..{len(self)} or cache more windows."
            )
        view = copy.copy(self)
        view.windows = self.windows.select(slice(0, n_windows))
        view._taps, view._final = self._taps[:n_windows], self._final[:n_windows]
        return view

    def batch(self, index: Tensor | np.ndarray | slice) -> tuple[Tensor, Tensor, Tensor]:
        """``(taps, final, labels)`` for the chosen windows, as float32 tensors in RAM."""
        if isinstance(index, Tensor):
            index = index.numpy()
        return _to_tensor(self._taps[index]), _to_tensor(self._final[index]), self.windows.labels[index]

    def iter_batches(self, batch_windows: int):
        """Consecutive batches in window order: ``(window index slice, taps, final, labels)``."""
        for start in range(0, len(self), batch_windows):
            index = slice(start, min(start + batch_windows, len(self)))
            yield (index, *self.batch(index))


def _to_tensor(array: np.ndarray) -> Tensor:
    """float32 tensor in RAM; copies read-only memmap views (slices), not fancy-indexed copies."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _cache_key(backbone: Backbone, windows: Windows, taps: tuple[int, ...], dtype: np.dtype) -> str:
    payload = json.dumps(
        {
            "format": _FORMAT,
            "backbone": backbone.fingerprint(),
            "taps": list(taps),
            "windows": windows.content_hash(),
            "dtype": np.dtype(dtype).name,
            **({"bos_prefix": True} if backbone.bos_prefix else {}),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def extract_features(
    backbone: Backbone,
    windows: Windows,
    taps: Sequence[int],
    batch_windows: int = 8,
    dtype: str = "float32",
    root: Path | None = None,
    desc: str = "tap features",
) -> FeatureSet:
    """Run the frozen backbone once over ``windows`` and cache the tap features on disk.

    The entry is checked (see :mod:`abi.cache_integrity`) before use; a damaged one is rebuilt.
    """
    taps = backbone.check_taps(taps)
    np_dtype = np.dtype(dtype)
    key = _cache_key(backbone, windows, taps, np_dtype)
    final_dir = (root or cache_dir() / "features") / backbone.name.replace("/", "_") / key
    meta = {
        "backbone": backbone.name,
        "taps": list(taps),
        "n_windows": len(windows),
        "seq_len": windows.seq_len,
        "dtype": np_dtype.name,
    }
    return load_checked(
        final_dir,
        lambda: _open_checked(final_dir, windows, taps, meta),
        lambda: _build(backbone, windows, taps, np_dtype, final_dir, meta, batch_windows, desc),
    )


def _open_checked(directory: Path, windows: Windows, taps: tuple[int, ...], meta: dict) -> FeatureSet:
    """The entry as a FeatureSet, or :class:`BadEntry` if its metadata or content does not check out."""
    recorded = read_json(directory / "meta.json")
    described = {name: recorded.get(name) for name in meta}
    if described != meta:
        raise BadEntry(f"meta.json describes {described}, expected {meta}")
    check_digests(directory, recorded.get(HASH_NAME))
    try:
        return FeatureSet(directory, windows, taps)
    except (OSError, ValueError) as error:
        raise BadEntry(f"numpy cannot read it ({error})") from error


def _build(
    backbone: Backbone,
    windows: Windows,
    taps: tuple[int, ...],
    dtype: np.dtype,
    final_dir: Path,
    meta: dict,
    batch_windows: int,
    desc: str,
) -> None:
    """Extract into ``<key>.partial`` (resuming a checked earlier attempt), then rename it into place."""
    partial = final_dir.with_name(f"{final_dir.name}.partial")
    n, t, k, d = len(windows), windows.seq_len, len(taps), backbone.d_model
    shapes = {"taps.npy": (n, t, k, d), "final.npy": (n, t, d)}
    done, chain, (tap_store, final_store) = _resume(partial, shapes, dtype)
    with tqdm(total=n, initial=done, desc=f"{desc} ({backbone.name})", unit="window") as bar:
        for start in range(done, n, batch_windows):
            stop = min(start + batch_windows, n)
            chunk = windows.select(slice(start, stop))
            device = next(backbone.model.parameters()).device
            encoder_ids = chunk.encoder_ids.to(device) if chunk.encoder_ids is not None else None
            out = backbone.tap_features(chunk.input_ids.to(device), taps, encoder_ids=encoder_ids)
            tap_rows, final_rows = out.taps.cpu().numpy().astype(dtype), out.final.cpu().numpy().astype(dtype)
            tap_store[start:stop] = tap_rows
            final_store[start:stop] = final_rows
            tap_store.flush()
            final_store.flush()
            chain = _chain(chain, tap_rows, final_rows)
            atomic_write_json(partial / _PROGRESS, {"done": stop, "chain": chain}, indent=None)
            bar.update(stop - start)
    del tap_store, final_store
    atomic_write_json(partial / "meta.json", {**meta, HASH_NAME: record_digests(partial, shapes)})
    (partial / _PROGRESS).unlink()
    os.replace(partial, final_dir)


def _chain(chain: str, tap_rows: np.ndarray, final_rows: np.ndarray) -> str:
    """Extend the running hash of the finished windows, one window at a time (batch sizes may differ)."""
    for taps_row, final_row in zip(tap_rows, final_rows):
        digest = hashlib.sha256(chain.encode())
        digest.update(np.ascontiguousarray(taps_row).tobytes())
        digest.update(np.ascontiguousarray(final_row).tobytes())
        chain = digest.hexdigest()
    return chain


def _resume(partial: Path, shapes: dict[str, tuple[int, ...]], dtype: np.dtype) -> tuple[int, str, list]:
    """``(windows done, their running hash, stores)`` of a checked earlier attempt, or a fresh start.

    Progress is written after the rows are flushed, so a clean kill loses at most one batch. An
    empty or invalid progress file, or rows that no longer match its hash, restart from zero.
    """
    if (partial / _PROGRESS).exists():
        try:
            return _checked_progress(partial, shapes, dtype)
        except BadEntry as bad:
            discard(partial, f"cannot resume: {bad}")
    partial.mkdir(parents=True, exist_ok=True)
    stores = [
        np.lib.format.open_memmap(partial / name, mode="w+", dtype=dtype, shape=shape) for name, shape in shapes.items()
    ]
    return 0, "", stores


def _checked_progress(partial: Path, shapes: dict[str, tuple[int, ...]], dtype: np.dtype) -> tuple[int, str, list]:
    """The resume point if the progress file is valid and the finished rows still match its hash."""
    progress = read_json(partial / _PROGRESS)
    done, chain = progress.get("done"), progress.get("chain")
    n = next(iter(shapes.values()))[0]
    if not isinstance(done, int) or not 0 <= done <= n or not isinstance(chain, str):
        raise BadEntry(f"{_PROGRESS} holds {progress}, not a window count in 0..{n} and a hash")
    try:
        stores = [np.load(partial / name, mmap_mode="r+") for name in shapes]
    except (OSError, ValueError) as error:
        raise BadEntry(f"numpy cannot read the partial arrays ({error})") from error
    if [(s.shape, s.dtype) for s in stores] != [(shape, dtype) for shape in shapes.values()]:
        raise BadEntry("the partial arrays do not have the expected shapes and dtype")
    if _chain("", stores[0][:done], stores[1][:done]) != chain:
        raise BadEntry(f"the {done} finished windows no longer match the hash in {_PROGRESS}")
    return done, chain, stores
