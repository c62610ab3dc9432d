"""BERT's masking: choose tokens (or whole words) to predict and corrupt the input 80% mask / 10% random / 10% kept.

Whole-word masking needs word boundaries that hold for every tokenizer and for Chinese, which has no spaces: the
tokens of a window are turned back into text pieces, jieba segments that text (it keeps English words whole and
splits Chinese into words), and every token belongs to the word its first visible character falls in.
"""

from __future__ import annotations

import numpy as np
import torch

from lmforge.data.clean import load_jieba
from lmforge.tokenizers import Tokenizer
from lmforge.train.labels import IGNORE_INDEX


def token_pieces(tokenizer: Tokenizer) -> list[str]:
    """The text each token id stands for inside running text (with the space before it, where it has one)."""
    kind = tokenizer.kind
    pieces = []
    for i in range(tokenizer.vocab_size):
        tok = tokenizer.id_to_token(i) or ""
        if kind == "wordpiece":
            piece = tok[2:] if tok.startswith("##") else " " + tok
        elif kind == "unigram":
            piece = tok.replace("\u2581", " ")
        elif kind == "word":
            piece = " " + tok
        elif kind == "char":
            piece = tok
        else:  # byte-level BPE and imported tokenizers: the decoder knows the piece (spaces included)
            piece = tokenizer.decode([i], skip_special_tokens=False)
        pieces.append(piece)
    return pieces


def word_ids(ids: np.ndarray, pieces: list[str], special: np.ndarray) -> np.ndarray:
    """A word index per token of one sequence (-1 for special tokens), from jieba's segmentation of its text."""
    jieba = load_jieba()
    texts = [pieces[int(i)] for i in ids]
    text = "".join(texts)
    char_word = np.empty(len(text), dtype=np.int64)
    for w, (_, start, end) in enumerate(jieba.tokenize(text)):
        char_word[start:end] = w
    out = np.full(len(ids), -1, dtype=np.int64)
    pos = 0
    for t, piece in enumerate(texts):
        if not special[ids[t]] and piece:
            visible = len(piece) - len(piece.lstrip())
            out[t] = char_word[pos + min(visible, len(piece) - 1)]
        pos += len(piece)
    return out


class Masker:
    """Draws BERT's masked inputs and labels for batches of token ids."""

    def __init__(self, tokenizer: Tokenizer, mask_prob: float = 0.15, whole_word: bool = False):
        if tokenizer.mask_id is None:
            raise ValueError("masked-LM training needs a tokenizer with a mask token")
        self.mask_id, self.vocab_size = tokenizer.mask_id, tokenizer.vocab_size
        self.mask_prob, self.whole_word = mask_prob, whole_word
        self.special = np.zeros(tokenizer.vocab_size, dtype=bool)
        self.special[[i for i in tokenizer.special_ids.values() if i is not None]] = True
        self.pieces = token_pieces(tokenizer) if whole_word else None

    def select(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A boolean (B, T) choice of the positions to predict; special tokens are never chosen."""
        candidates = ~torch.from_numpy(self.special)[x]
        if not self.whole_word:
            return (torch.rand(x.shape, generator=generator) < self.mask_prob) & candidates
        rows = []
        for row in x.numpy():
            words = word_ids(row, self.pieces, self.special)
            n_words = int(words.max()) + 1 if words.size else 0
            chosen = (torch.rand(max(n_words, 1), generator=generator) < self.mask_prob).numpy()
            rows.append(np.where(words >= 0, chosen[np.maximum(words, 0)], False))
        return torch.from_numpy(np.stack(rows)) & candidates

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(corrupted inputs, labels): labels hold the original token at chosen positions and -100 elsewhere."""
        chosen = self.select(x, generator)
        labels = torch.where(chosen, x, torch.full_like(x, IGNORE_INDEX))
        r = torch.rand(x.shape, generator=generator)
        random_ids = torch.randint(self.vocab_size, x.shape, generator=generator)
        inputs = torch.where(chosen & (r < 0.8), torch.full_like(x, self.mask_id), x)
        inputs = torch.where(chosen & (r >= 0.8) & (r < 0.9), random_ids, inputs)
        return inputs, labels
