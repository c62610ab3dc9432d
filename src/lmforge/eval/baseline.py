"""The unigram baseline: what a model that ignores context entirely achieves on the same tokens."""

from __future__ import annotations

import math
import os

import numpy as np

from lmforge.data.shards import TokenShards
from lmforge.eval.perplexity import summarize


def token_counts(shards: TokenShards, vocab_size: int) -> np.ndarray:
    counts = np.zeros(vocab_size, dtype=np.int64)
    for arr in shards.arrays:
        step = 1 << 24  # count in chunks so memory stays flat on huge shards
        for start in range(0, arr.size, step):
            counts += np.bincount(arr[start : start + step], minlength=vocab_size)[:vocab_size]
    return counts


def unigram_baseline(data_dir: str | os.PathLike) -> dict:
    """Add-one smoothed unigram model fitted on the train split, scored on the validation split."""
    train, val = TokenShards(data_dir, "train"), TokenShards(data_dir, "val")
    vocab = int(train.manifest["vocab_size"])
    train_counts = token_counts(train, vocab)
    log_p = np.log(train_counts + 1.0) - math.log(train_counts.sum() + vocab)
    val_counts = token_counts(val, vocab)
    nats = float(-(val_counts * log_p).sum())
    return summarize(nats, int(val_counts.sum()), val.bytes)
