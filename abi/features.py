"""Token windows and the tap-feature cache.

The backbone is frozen, so the tap hidden states of a window never change: they are computed
once, stored memory-mapped on disk (keyed by backbone fingerprint + taps + window tokens), and
every training stage reads them from there. The original recomputed the whole backbone at every
step of every stage; ``benchmarks/`` measures what the cache saves. An interrupted extraction
resumes from the last finished batch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from abi.backbones import Backbone
from abi.paths import cache_dir

IGNORE_INDEX = -100
_FORMAT = 1


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
    """Run the frozen backbone once over ``windows`` and cache the tap features on disk."""
    taps = backbone.check_taps(taps)
    np_dtype = np.dtype(dtype)
    key = _cache_key(backbone, windows, taps, np_dtype)
    base = (root or cache_dir() / "features") / backbone.name.replace("/", "_")
    final_dir = base / key
    if (final_dir / "meta.json").is_file():
        return FeatureSet(final_dir, windows, taps)
    partial = base / f"{key}.partial"
    partial.mkdir(parents=True, exist_ok=True)
    n, t, k, d = len(windows), windows.seq_len, len(taps), backbone.d_model
    tap_store = _open_store(partial / "taps.npy", (n, t, k, d), np_dtype)
    final_store = _open_store(partial / "final.npy", (n, t, d), np_dtype)
    progress_file = partial / "progress.json"
    done = json.loads(progress_file.read_text())["done"] if progress_file.is_file() else 0
    with tqdm(total=n, initial=done, desc=f"{desc} ({backbone.name})", unit="window") as bar:
        for start in range(done, n, batch_windows):
            stop = min(start + batch_windows, n)
            chunk = windows.select(slice(start, stop))
            device = next(backbone.model.parameters()).device
            encoder_ids = chunk.encoder_ids.to(device) if chunk.encoder_ids is not None else None
            out = backbone.tap_features(chunk.input_ids.to(device), taps, encoder_ids=encoder_ids)
            tap_store[start:stop] = out.taps.cpu().numpy().astype(np_dtype)
            final_store[start:stop] = out.final.cpu().numpy().astype(np_dtype)
            tap_store.flush()
            final_store.flush()
            progress_file.write_text(json.dumps({"done": stop}))
            bar.update(stop - start)
    del tap_store, final_store
    meta = {"backbone": backbone.name, "taps": list(taps), "n_windows": n, "seq_len": t, "dtype": np_dtype.name}
    (partial / "meta.json").write_text(json.dumps(meta, indent=2))
    progress_file.unlink()
    os.replace(partial, final_dir)
    return FeatureSet(final_dir, windows, taps)


def _open_store(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.memmap:
    """Open (resume) or create a memory-mapped .npy array of the given shape."""
    if path.is_file():
        store = np.load(path, mmap_mode="r+")
        if store.shape == shape and store.dtype == dtype:
            return store
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
