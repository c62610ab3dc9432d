"""How the tfidf classifier reads a text: its n-gram features (the analyzer, the same at fitting and prediction) and
the encoder that turns texts into the batches of feature ids and counts that models/tfidf.py scores.

Words are scikit-learn's default tokens (runs of two or more word characters, lower-cased), optionally stemmed
(Snowball); features are word n-grams ("w:very good"), optionally character n-grams inside words padded with
spaces ("c: goo", scikit-learn's char_wb), and those of the second text of a pair with a "2" prefix.
"""

from __future__ import annotations

import collections
import re

import torch

from lmforge.data.stemming import stem_words
from lmforge.tokenizers import Tokenizer

TOKEN = re.compile(r"(?u)\b\w\w+\b")


def words_of(text: str, stem: str = "") -> list[str]:
    words = TOKEN.findall(text.lower())
    return stem_words(words, stem) if stem else words


def analyze(text: str, cfg) -> list[str]:
    """The features of one text under a TfidfConfig's settings (word_ngrams, char_ngrams, stem)."""
    words = words_of(text, cfg.stem)
    out = []
    if cfg.word_ngrams:
        low, high = cfg.word_ngrams
        for n in range(low, high + 1):
            out.extend("w:" + " ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    if cfg.char_ngrams:
        low, high = cfg.char_ngrams
        for word in words:
            padded = f" {word} "
            for n in range(low, min(high, len(padded)) + 1):
                out.extend("c:" + padded[i : i + n] for i in range(len(padded) - n + 1))
    return out


def analyze_pair(text: str, pair: str | None, cfg) -> list[str]:
    return analyze(text, cfg) + (["2" + f for f in analyze(pair, cfg)] if pair is not None else [])


class TfidfEncoder:
    """Text (and pair) -> (feature ids, counts) rows; rows -> (ids, mask, counts) batches. The feature vocabulary is
    the checkpoint's tokenizer (a word-level vocabulary whose "words" are the features)."""

    def __init__(self, tokenizer: Tokenizer, cfg):
        self.cfg = cfg
        self.vocab = tokenizer.hf.get_vocab(with_added_tokens=False)

    def __call__(self, text: str, pair: str | None = None) -> tuple[list[int], list[float]]:
        counts = collections.Counter(
            i for i in (self.vocab.get(f) for f in analyze_pair(text, pair, self.cfg)) if i is not None
        )
        return list(counts), [float(c) for c in counts.values()]

    def batch(self, rows, device=None) -> tuple[torch.Tensor, ...]:
        width = max(1, max(len(ids) for ids, _ in rows))
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        counts = torch.zeros((len(rows), width), dtype=torch.float32)
        for i, (row_ids, row_counts) in enumerate(rows):
            ids[i, : len(row_ids)] = torch.tensor(row_ids, dtype=torch.long)
            counts[i, : len(row_counts)] = torch.tensor(row_counts, dtype=torch.float32)
            mask[i, : len(row_ids)] = 1
        out = (ids, mask, counts)
        return tuple(t.to(device) for t in out) if device is not None else out
