"""t5-mini: a small T5 encoder-decoder pre-trained from scratch on the offline corpora.

Why it exists: claim 2 moves a module from an encoder-decoder to a decoder-only model, and no
pretrained T5 (nor its SentencePiece model) ships in any package this project can install.

The recipe, every step seeded and logged:

1. ``prepare``: a SentencePiece BPE vocabulary of 8,000 pieces trained on the *train* splits of
   the code corpus (:mod:`abi.data`) and the prose corpus (:mod:`abi.prose`), with identity
   normalisation and whitespace kept (code needs its indentation and newlines) and byte
   fallback (no unknown characters). It is loaded through transformers' Llama converter, which
   reproduces SentencePiece's BPE segmentation exactly; the T5 converter would collapse
   whitespace. Both corpora are then tokenized per split with that tokenizer, exactly as the
   experiments tokenize them.
2. ``train``: T5 v1.0 layout like the release's T5-large (ReLU feed-forward, tied embeddings, so
   the head scales by ``d_model**-0.5``), 4+4 layers, d=256. Objective: prefix-LM, the layout of
   the ``t5-prefix`` protocol: 64 tokens into the encoder, the next 64 predicted by the decoder
   (inputs shifted right with the pad token). Windows are drawn uniformly from the train
   streams; AdamW with warm-up and cosine decay; validation loss at intervals; the best
   validation checkpoint is kept.
3. ``evaluate``: held-out perplexity on tiled windows of the *test* splits, code and prose apart.
4. ``save``: weights in bfloat16 (the stored weights *are* the model; perplexities are measured
   on them), sharded below 16 MB, with tokenizer, config and the training log.

The committed checkpoint was trained once (see its ``training_log.json`` for the device and the
time); ``make t5-mini`` retrains it (``DEVICE=cuda`` where a GPU exists).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from abi.zoo import CHECKPOINT_DIR

NAME = "t5-mini"
SPECIAL = {"pad": 0, "eos": 1, "unk": 2, "bos": 3}
CORPORA = ("code", "prose")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Recipe:
    """Every choice of the recipe; recorded in the training log."""

    vocab_size: int = 8000
    d_model: int = 256
    d_ff: int = 1024
    d_kv: int = 64
    num_heads: int = 4
    num_layers: int = 4
    num_decoder_layers: int = 4
    dropout: float = 0.1
    prefix_len: int = 64
    cont_len: int = 64
    steps: int = 3000
    batch_windows: int = 128
    lr: float = 1e-3
    warmup_steps: int = 200
    min_lr_fraction: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 250
    val_windows: int = 256
    seed: int = 0

    @property
    def span(self) -> int:
        return self.prefix_len + self.cont_len


# -- 1. prepare -------------------------------------------------------------------------------
def train_tokenizer(texts: list[str], out_dir: Path, recipe: Recipe) -> Any:
    """Train the SentencePiece BPE model and save it as a transformers tokenizer in ``out_dir``."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=recipe.vocab_size,
        model_type="bpe",
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        byte_fallback=True,
        split_digits=True,
        user_defined_symbols=["\n", "\t"],
        character_coverage=0.9995,
        max_sentence_length=1_000_000,
        pad_id=SPECIAL["pad"],
        eos_id=SPECIAL["eos"],
        unk_id=SPECIAL["unk"],
        bos_id=SPECIAL["bos"],
        num_threads=2,
        minloglevel=2,
    )
    staging = out_dir / "spm"
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "pad_token": "<pad>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "bos_token": "<s>",
        "add_bos_token": False,
        "add_eos_token": False,
        "legacy": False,
    }
    (staging / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = AutoTokenizer.from_pretrained(staging)
    tokenizer.save_pretrained(out_dir / "tokenizer")
    shutil.copy(staging / "tokenizer.model", out_dir / "tokenizer" / "spiece.model")
    return tokenizer


def prepare(out_dir: Path, recipe: Recipe = Recipe()) -> dict[str, Any]:
    """Vocabulary and token streams (int16 .npy per corpus and split) for :func:`train`."""
    from abi.data import load_code_corpus, split_corpus, token_stream
    from abi.prose import load_prose_corpus

    corpora = {"code": load_code_corpus(), "prose": load_prose_corpus()}
    splits = {name: split_corpus(corpus) for name, corpus in corpora.items()}
    texts = [f.text for name in CORPORA for f in splits[name].train]
    tokenizer = train_tokenizer(texts, out_dir, recipe)
    manifest: dict[str, Any] = {"corpora": {}, "streams": {}}
    for name in CORPORA:
        manifest["corpora"][name] = {"identity": corpora[name].identity, "split": splits[name].identity()}
        for split in SPLITS:
            stream = token_stream(splits[name].files(split), tokenizer)
            np.save(out_dir / f"{name}-{split}.npy", stream.astype(np.int16))
            manifest["streams"][f"{name}-{split}"] = int(stream.size)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


# -- 2. train ---------------------------------------------------------------------------------
def build_model(recipe: Recipe) -> torch.nn.Module:
    """A freshly initialised T5 v1.0-style model (seeded by the caller)."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=recipe.vocab_size,
        d_model=recipe.d_model,
        d_ff=recipe.d_ff,
        d_kv=recipe.d_kv,
        num_heads=recipe.num_heads,
        num_layers=recipe.num_layers,
        num_decoder_layers=recipe.num_decoder_layers,
        dropout_rate=recipe.dropout,
        feed_forward_proj="relu",
        tie_word_embeddings=True,
        pad_token_id=SPECIAL["pad"],
        eos_token_id=SPECIAL["eos"],
        decoder_start_token_id=SPECIAL["pad"],
    )
    return T5ForConditionalGeneration(config)


def _windows(stream: np.ndarray, starts: np.ndarray, recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder prefix, decoder labels) for windows starting at ``starts``."""
    index = starts[:, None] + np.arange(recipe.span)[None, :]
    tokens = torch.from_numpy(stream[index].astype(np.int64))
    return tokens[:, : recipe.prefix_len].contiguous(), tokens[:, recipe.prefix_len :].contiguous()


def _tiled_starts(n_tokens: int, span: int, limit: int | None = None) -> np.ndarray:
    starts = np.arange(0, n_tokens - span + 1, span)
    return starts if limit is None else starts[np.linspace(0, len(starts) - 1, min(limit, len(starts))).astype(int)]


def _lr(step: int, recipe: Recipe) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_fraction`` of the peak."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    floor = recipe.min_lr_fraction
    return recipe.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def mean_nll(
    model: torch.nn.Module, stream: np.ndarray, starts: np.ndarray, recipe: Recipe, device: str, batch: int = 128
) -> float:
    """Mean next-token NLL (nats) of the continuation tokens of the given windows."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(starts), batch):
        prefix, labels = _windows(stream, starts[i : i + batch], recipe)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=device != "cpu"):
            logits = model(input_ids=prefix.to(device), labels=labels.to(device)).logits
        nll = torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), labels.to(device).flatten(), reduction="sum"
        )
        total, count = total + float(nll), count + labels.numel()
    model.train()
    return total / count


def train(data_dir: Path, out_dir: Path, recipe: Recipe = Recipe(), device: str = "cpu") -> dict[str, Any]:
    """Pre-train with the prefix-LM objective; keep the best validation state; evaluate; save."""
    from abi.progress import tqdm

    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    streams = {f"{c}-{s}": np.load(data_dir / f"{c}-{s}.npy").astype(np.int64) for c in CORPORA for s in SPLITS}
    train_stream = np.concatenate([streams["code-train"], streams["prose-train"]])
    val_starts = {c: _tiled_starts(len(streams[f"{c}-validation"]), recipe.span, recipe.val_windows) for c in CORPORA}
    model = build_model(recipe).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    log: dict[str, Any] = {
        "recipe": asdict(recipe),
        "device": _device_name(device),
        "torch": torch.__version__,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "train_tokens": int(len(train_stream)),
        "loss": [],
        "validation": [],
    }
    best, best_state = math.inf, None
    start = time.perf_counter()
    model.train()
    for step in tqdm(range(recipe.steps), desc="t5-mini pre-training", unit="step", mininterval=5):
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, recipe)
        starts = rng.integers(0, len(train_stream) - recipe.span + 1, size=recipe.batch_windows)
        prefix, labels = _windows(train_stream, starts, recipe)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=device != "cpu"):
            loss = model(input_ids=prefix.to(device), labels=labels.to(device)).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"t5-mini pre-training: loss {loss.item()} at step {step}; lower --lr.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        if step % 25 == 0:
            log["loss"].append({"step": step, "loss": float(loss), "lr": _lr(step, recipe)})
        if (step + 1) % recipe.eval_every == 0 or step == recipe.steps - 1:
            val = {c: mean_nll(model, streams[f"{c}-validation"], val_starts[c], recipe, device) for c in CORPORA}
            mean = float(np.mean(list(val.values())))
            log["validation"].append(
                {
                    "step": step,
                    **{f"{c}_nll": v for c, v in val.items()},
                    "mean_nll": mean,
                    "elapsed_s": round(time.perf_counter() - start, 1),
                }
            )
            if mean < best:
                best, log["best_step"] = mean, step
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    log["train_wall_s"] = round(time.perf_counter() - start, 1)
    model.load_state_dict(best_state)
    model = model.to(torch.bfloat16).to(torch.float32)  # the stored bf16 weights are the model
    log["test_perplexity"] = {
        c: math.exp(
            mean_nll(model, streams[f"{c}-test"], _tiled_starts(len(streams[f"{c}-test"]), recipe.span), recipe, device)
        )
        for c in CORPORA
    }
    log["test_windows"] = {c: int(len(_tiled_starts(len(streams[f"{c}-test"]), recipe.span))) for c in CORPORA}
    save(model.cpu(), data_dir / "tokenizer", out_dir, log)
    return log


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({os.cpu_count()} cores)"


def save(model: torch.nn.Module, tokenizer_dir: Path, out_dir: Path, log: dict[str, Any]) -> None:
    """Weights (bf16, shards below 16 MB), tokenizer, config and log; written, then renamed."""
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(staging, max_shard_size="15MB")
    for path in Path(tokenizer_dir).iterdir():
        shutil.copy(path, staging / path.name)
    manifest = Path(tokenizer_dir).parent / "manifest.json"
    if manifest.is_file():
        shutil.copy(manifest, staging / "data_manifest.json")
    (staging / "training_log.json").write_text(json.dumps(log, indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(staging, out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Prepare data for, train, and install the t5-mini zoo model.")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="train the vocabulary and tokenize the corpora")
    prep.add_argument("--data", type=Path, required=True)
    tr = sub.add_parser("train", help="pre-train and save a checkpoint directory")
    tr.add_argument("--data", type=Path, required=True)
    tr.add_argument("--out", type=Path, required=True)
    tr.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    tr.add_argument("--steps", type=int, default=Recipe.steps)
    inst = sub.add_parser("install", help="copy a trained checkpoint into abi/zoo/checkpoints/t5-mini")
    inst.add_argument("--from", dest="source", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        args.data.mkdir(parents=True, exist_ok=True)
        print(json.dumps(prepare(args.data)["streams"], indent=1))
    elif args.command == "train":
        recipe = Recipe(steps=args.steps)
        log = train(args.data, args.out, recipe, args.device)
        print(json.dumps({k: log[k] for k in ("device", "train_wall_s", "best_step", "test_perplexity")}, indent=1))
    else:
        target = CHECKPOINT_DIR / NAME
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(args.source, target)
        print(f"installed {args.source} -> {target}")


if __name__ == "__main__":
    main()
