"""How a tagger reads words: each word encoded on its own, so that every word knows its sub-tokens.

Only the first sub-token of a word carries the word's tag; its other pieces (and [CLS]/[SEP]) get IGNORE_INDEX, which
the loss skips, and a word's prediction is read from its first sub-token. A BERT backbone reads
`[bos] pieces... [eos]` as it was pretrained; a recurrent one reads the pieces alone.
"""

from __future__ import annotations

import torch

from lmforge.tokenizers import Tokenizer
from lmforge.train.labels import IGNORE_INDEX


class WordEncoder:
    def __init__(self, tokenizer: Tokenizer, backbone: str, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length
        specials = [tokenizer.bos_id, tokenizer.eos_id] if backbone == "bert" else []
        self.bos, self.eos = (specials + [None, None])[:2]
        self.budget = max(1, max_length - len(specials))
        self.pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        self.unk = tokenizer.unk_id if tokenizer.unk_id is not None else self.pad

    def pieces(self, words: list[str]) -> list[list[int]]:
        # A word the tokenizer drops entirely (a lone control character) still needs a position of its own.
        return [ids or [self.unk] for ids in self.tokenizer.encode_batch(words)] if words else []

    def spans(self, pieces: list[list[int]]) -> list[tuple[int, int]]:
        """Consecutive word ranges [a, b) that each fit max_length whole (a word longer than that alone is cut)."""
        out, start, used = [], 0, 0
        for i, p in enumerate(pieces):
            if used and used + len(p) > self.budget:
                out.append((start, i))
                start, used = i, 0
            used += len(p)
        if start < len(pieces):
            out.append((start, len(pieces)))
        return out

    def row(
        self, pieces: list[list[int]], tags: list[int] | None = None
    ) -> tuple[list[int], list[int], list[int]]:
        """(token ids, per-token labels with IGNORE_INDEX off the first sub-tokens, position of each word's first
        sub-token) for words that fit (callers pass one span of `spans`)."""
        if len(pieces) == 1:  # the one case where a span does not fit: a single over-long word
            pieces = [pieces[0][: self.budget]]
        ids = [self.bos] if self.bos is not None else []
        labels = [IGNORE_INDEX] * len(ids)
        starts = []
        for i, p in enumerate(pieces):
            starts.append(len(ids))
            ids += p
            labels += [tags[i] if tags is not None else IGNORE_INDEX] + [IGNORE_INDEX] * (len(p) - 1)
        if self.eos is not None:
            ids.append(self.eos)
            labels.append(IGNORE_INDEX)
        return ids, labels, starts

    def __call__(
        self, words: list[str], tags: list[int] | None = None
    ) -> tuple[list[int], list[int], list[int]]:
        """The training row of a sentence: truncated at max_length, whole words only."""
        pieces = self.pieces(words)
        a, b = self.spans(pieces)[0] if pieces else (0, 0)
        return self.row(pieces[a:b], tags[a:b] if tags is not None else None)

    def batch(
        self, rows: list[tuple[list[int], list[int], list[int]]], device=None
    ) -> tuple[torch.Tensor, ...]:
        """(input_ids, attention_mask, labels), right-padded to the longest row."""
        width = max(len(r[0]) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row_ids, row_labels, _) in enumerate(rows):
            ids[i, : len(row_ids)] = torch.tensor(row_ids)
            labels[i, : len(row_labels)] = torch.tensor(row_labels)
            mask[i, : len(row_ids)] = 1
        out = (ids, mask, labels)
        return tuple(t.to(device) for t in out) if device is not None else out
