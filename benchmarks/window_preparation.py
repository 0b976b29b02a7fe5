"""Benchmark: window preparation with the hand-written token cache vs the ``datasets`` path.

Window preparation is what ``load_streams`` and the claim set-ups do before any model runs: tokenize the
train/validation/test files of a domain into flat token streams (cached), then draw windows (tiled training
windows, spread evaluation windows). Both paths give byte-identical streams and windows (checked here):

* hand-written: :func:`abi.data.token_stream`, one checked ``.npy`` per split keyed by tokenizer and file hashes;
* datasets: :mod:`abi.corpus_dataset`, the split saved as a DatasetDict (``save_to_disk``, checked),
  tokenized by ``Dataset.map(batched=True)`` with its fingerprint cache (sidecar-checked), flattened;
* datasets, unchecked: the same with datasets' cache alone, to show what the sha256 checks cost;
* hand-written, identity once: the hand-written path with its tokenizer identity (sorted vocabulary, hashed)
  computed once per preparation instead of once per split, to show what that part of its key costs.

Cold: a new, empty cache folder per repeat (``ABI_CACHE_DIR`` in a temporary folder), so every cache is built.
Warm: the cache filled once, each repeat reading it as a new process would (remembered hashes forgotten).
Reading the corpus is common to both paths and is timed apart. Reported: median with min-max, and the datasets
paths' difference in % of the hand-written median (+ slower, - faster).

Run: ``python -m benchmarks.window_preparation [--out PATH]``; it is not part of ``make benchmarks`` and
writes its JSON to a temporary folder unless ``--out`` names a file.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import datasets
import numpy as np
import torch

from abi import corpus_dataset as cd
from abi import data
from abi.cache_integrity import forget_digests
from abi.data import SPLITS, decoder_windows, tiled_starts, token_stream
from abi.experiments.common import domain_split, spread_starts
from benchmarks.common import ratio, timed, write_section
from benchmarks.models import benchmark_backbone

Streams = dict[str, np.ndarray]


def hand_written(split: Any, tokenizer: Any) -> Streams:
    """What ``load_streams`` does today."""
    return {name: token_stream(split.files(name), tokenizer) for name in SPLITS}


def hand_written_identity_once(split: Any, tokenizer: Any) -> Streams:
    """``hand_written`` with the tokenizer's identity (its sorted vocabulary, hashed) computed once, not per split:
    shows how much of the hand-written path's time that key costs."""
    identity = data.tokenizer_identity(tokenizer)
    with mock.patch.object(data, "tokenizer_identity", lambda _: identity):
        return hand_written(split, tokenizer)


def with_datasets(domain: str, corpus: Any, split: Any, tokenizer: Any, checked: bool) -> Streams:
    """The same streams through the saved DatasetDict and ``Dataset.map``."""
    tokenized = cd.tokenize_dataset(cd.saved_split_dataset(domain, corpus, split), tokenizer, checked=checked)
    separator = cd.separator_of(tokenizer)
    return {name: cd.dataset_token_stream(tokenized[name], separator) for name in SPLITS}


def draw_windows(streams: Streams, window_len: int, n_train: int, n_eval: int) -> dict[str, torch.Tensor]:
    """Tiled training windows and spread, non-overlapping evaluation windows, as the claim set-ups draw them."""
    train = streams["train"]
    windows = {"train": decoder_windows(train, tiled_starts(len(train), window_len, n_train), window_len)}
    for seed, name in enumerate(("validation", "test")):
        starts = spread_starts(len(streams[name]), window_len, n_eval, seed)
        windows[name] = decoder_windows(streams[name], starts, window_len)
    return windows


@contextlib.contextmanager
def cache_folder(path: str) -> Iterator[None]:
    """``ABI_CACHE_DIR`` set to ``path`` and no remembered file hashes, as in a new process."""
    previous = os.environ.get("ABI_CACHE_DIR")
    os.environ["ABI_CACHE_DIR"] = path
    forget_digests()
    try:
        yield
    finally:
        if previous is None:
            del os.environ["ABI_CACHE_DIR"]
        else:
            os.environ["ABI_CACHE_DIR"] = previous


def in_fresh_cache(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds ``fn`` takes, and its result, in a new, empty cache folder (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="abi-bench-windows-") as tmp, cache_folder(tmp):
        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out


def summary(times: list[float]) -> dict[str, float]:
    """The shape :func:`benchmarks.common.timed` returns."""
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}


def run(domain: str, backbone_name: str, repeats: int, window_len: int, n_train: int, n_eval: int) -> dict:
    start = time.perf_counter()
    corpus, split = domain_split(domain=domain)
    corpus_s = time.perf_counter() - start
    tokenizer = benchmark_backbone(backbone_name).tokenizer

    def prepare(streams: Callable[[], Streams]) -> Callable[[], dict[str, torch.Tensor]]:
        return lambda: draw_windows(streams(), window_len, n_train, n_eval)

    paths = {
        "hand_written": prepare(lambda: hand_written(split, tokenizer)),
        "datasets": prepare(lambda: with_datasets(domain, corpus, split, tokenizer, checked=True)),
        "datasets_unchecked": prepare(lambda: with_datasets(domain, corpus, split, tokenizer, checked=False)),
        "hand_written_identity_once": prepare(lambda: hand_written_identity_once(split, tokenizer)),
    }
    _, streams = in_fresh_cache(lambda: hand_written(split, tokenizer))
    results = {name: in_fresh_cache(fn)[1] for name, fn in paths.items()}  # warm-up, and the same windows?
    for name, windows in results.items():
        if any(not torch.equal(windows[s], results["hand_written"][s]) for s in SPLITS):
            raise AssertionError(f"the {name} path drew other windows than the hand-written one")
    cold: dict[str, list[float]] = {name: [] for name in paths}
    for repeat in range(repeats):  # paths interleaved, order rotated: a busy machine slows them alike
        names = list(paths)[repeat % len(paths) :] + list(paths)[: repeat % len(paths)]
        for name in names:
            cold[name].append(in_fresh_cache(paths[name])[0])
    warm = {}
    for name, fn in paths.items():
        with tempfile.TemporaryDirectory(prefix="abi-bench-windows-") as tmp, cache_folder(tmp):
            warm[name] = timed(lambda fn=fn: (forget_digests(), fn()), repeats, warmup=1)
    timings = {"cold": {name: summary(times) for name, times in cold.items()}, "warm": warm}
    return {
        "domain": domain,
        "backbone": backbone_name,
        "tokenizer": type(tokenizer).__name__,
        "datasets_version": datasets.__version__,
        "splits": {name: {"files": len(split.files(name)), "stream_tokens": len(streams[name])} for name in SPLITS},
        "windows": {"window_len": window_len, "train": n_train, "validation": n_eval, "test": n_eval},
        "map_batch_size": inspect.signature(cd.tokenize_dataset).parameters["batch_size"].default,
        "corpus_read_s": corpus_s,
        "tokenizer_identity": timed(lambda: data.tokenizer_identity(tokenizer), repeats),
        "timings": timings,
        "vs_hand_written": {
            when: {
                name: {
                    "change_percent": 100 * (t["median_s"] / timings[when]["hand_written"]["median_s"] - 1),
                    "speedup": ratio(timings[when]["hand_written"], t),
                }
                for name, t in timings[when].items()
                if name != "hand_written"
            }
            for when in ("cold", "warm")
        },
    }


def print_table(record: dict) -> None:
    print(f"window preparation, {record['domain']} train/validation/test, {record['backbone']} tokenizer")
    print(f"{'':6} {'path':28} {'median s':>9} {'min-max s':>14} {'vs hand-written':>16}")
    for when, timings in record["timings"].items():
        for name, t in timings.items():
            change = record["vs_hand_written"][when].get(name, {}).get("change_percent")
            note = "" if change is None else f"{change:+.0f} %"
            span = f"{t['min_s']:.3f}-{t['max_s']:.3f}"
            print(f"{when:6} {name:28} {t['median_s']:9.3f} {span:>14} {note:>16}")
    identity = record["tokenizer_identity"]["median_s"]
    print(
        f"(reading the corpus, common to all: {record['corpus_read_s']:.2f} s; the hand-written key's tokenizer "
        f"identity: {identity:.3f} s per split)"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", default="python")
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--window-len", type=int, default=128)
    parser.add_argument("--train-windows", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: a new temporary folder)")
    args = parser.parse_args(argv)
    datasets.disable_progress_bars()  # token_stream keeps its bar for the train split, as in the experiments
    out = args.out or Path(tempfile.mkdtemp(prefix="abi-bench-")) / "window_preparation.json"
    record = run(args.domain, args.backbone, args.repeats, args.window_len, args.train_windows, args.eval_windows)
    write_section("cpu", "window_preparation", record, path=out)
    print_table(record)
    print(f"-> {out}")
    return record


if __name__ == "__main__":
    main()
