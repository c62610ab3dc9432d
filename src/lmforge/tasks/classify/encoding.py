"""How a classifier reads its input: text (and an optional second text) to token ids, segment ids and batches.

BERT-style backbones read `[bos] text [eos] pair [eos]` with segment ids 0 then 1, as BERT was pretrained; GPT and
recurrent backbones read `text [eos] pair [eos]` (a GPT pools at the last token, which has then read everything).
Over-long inputs are cut longest-text-first, so a pair keeps as much of both texts as fits.
"""

from __future__ import annotations

import torch

from lmforge.data.stemming import stem_text
from lmforge.tasks.classify.tfidf_features import TfidfEncoder
from lmforge.tokenizers import Tokenizer


def text_encoder(tokenizer: Tokenizer, cfg, max_length: int | None = None):
    """The encoder of a classifier's config: the bag of n-grams of the tfidf model, else a TextEncoder (which
    stems the text first when the model was trained with --stem)."""
    if cfg.backbone == "tfidf":
        return TfidfEncoder(tokenizer, cfg)
    return TextEncoder(tokenizer, cfg.backbone, max_length or cfg.block_size, stem=getattr(cfg, "stem", ""))


class TextEncoder:
    def __init__(self, tokenizer: Tokenizer, backbone: str, max_length: int, stem: str = ""):
        self.tokenizer, self.max_length, self.stem = tokenizer, max_length, stem
        self.bos = tokenizer.bos_id if backbone == "bert" else None
        self.sep = tokenizer.eos_id
        self.pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0

    def __call__(self, text: str, pair: str | None = None) -> tuple[list[int], list[int]]:
        """(token ids, segment ids) of one input, at most max_length long."""
        if self.stem:  # the vocabulary of a model trained with --stem is one of stems
            text, pair = stem_text(text, self.stem), stem_text(pair, self.stem) if pair is not None else None
        a = self.tokenizer.encode(text)
        b = self.tokenizer.encode(pair) if pair is not None else None
        extra = (self.bos is not None) + (self.sep is not None) * (1 + (b is not None))
        budget = max(self.max_length - extra, 2 if b is not None else 1)
        while len(a) + (len(b) if b is not None else 0) > budget:
            if b is not None and len(b) > len(a):
                b = b[:-1]
            else:
                a = a[:-1]
        seps = [self.sep] if self.sep is not None else []
        first = ([self.bos] if self.bos is not None else []) + a + seps
        second = (b + seps) if b is not None else []
        return first + second, [0] * len(first) + [1] * len(second)

    def batch(self, rows: list[tuple[list[int], list[int]]], device=None) -> tuple[torch.Tensor, ...]:
        """(input_ids, attention_mask, token_type_ids), right-padded to the longest row."""
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row_ids, row_types) in enumerate(rows):
            ids[i, : len(row_ids)] = torch.tensor(row_ids)
            types[i, : len(row_types)] = torch.tensor(row_types)
            mask[i, : len(row_ids)] = 1
        return tuple(t.to(device) for t in (ids, mask, types)) if device is not None else (ids, mask, types)
