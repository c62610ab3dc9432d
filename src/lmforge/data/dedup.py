"""Deduplication: exact (64-bit digests of the cleaned text) and near (MinHash LSH over word 3-grams).

Memory: these are the only parts of `prepare` whose state grows with the corpus, and only with the number
of documents, never their size. Exact dedup keeps one 8-byte digest per kept document in an open-addressing
table at most half full (16-32 bytes per document); near dedup (off by default) keeps a MinHash signature
(512 bytes) plus the LSH band keys per document.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable

import numpy as np

from lmforge.extras import require


class DigestSet:
    """A set of non-zero 64-bit integers: a linear-probing hash table in a flat `array('Q')`."""

    def __init__(self, capacity: int = 1 << 12):
        capacity = 1 << max(4, (capacity - 1).bit_length())
        self._table = array("Q", bytes(8 * capacity))
        self._mask = capacity - 1
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, digest: int) -> bool:
        """Insert `digest` (taken modulo 2**64); True when it was not in the set yet."""
        digest &= 0xFFFFFFFFFFFFFFFF
        if digest == 0:  # 0 marks an empty slot
            digest = 1
        table, mask = self._table, self._mask
        # The low bits of a cryptographic digest are already uniform: use them as the slot directly.
        i = digest & mask
        while True:
            slot = table[i]
            if slot == 0:
                break
            if slot == digest:
                return False
            i = (i + 1) & mask
        table[i] = digest
        self._size += 1
        if 2 * self._size > len(table):
            self._grow()
        return True

    def __contains__(self, digest: int) -> bool:
        digest &= 0xFFFFFFFFFFFFFFFF
        digest = digest or 1
        table, mask = self._table, self._mask
        i = digest & mask
        while (slot := table[i]) != 0:
            if slot == digest:
                return True
            i = (i + 1) & mask
        return False

    def _grow(self) -> None:
        old = self._table
        capacity = 2 * len(old)
        self._table = array("Q", bytes(8 * capacity))
        self._mask = capacity - 1
        self._size = 0
        for digest in old:
            if digest:
                self.add(digest)


_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
# Words, except that each CJK character counts as one word (those scripts have no spaces).
_WORDS = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")


def shingles(text: str, n: int = 3) -> list[bytes]:
    """Word n-grams of `text` (lower-cased), as bytes: the sets whose Jaccard similarity MinHash estimates."""
    words = _WORDS.findall(text.lower())
    if len(words) < n:
        return [" ".join(words).encode("utf-8")] if words else []
    return [" ".join(words[i : i + n]).encode("utf-8") for i in range(len(words) - n + 1)]


class NearDuplicateFilter:
    """Finds documents whose estimated Jaccard similarity with a kept document reaches `threshold`.

    LSH proposes candidates; each is confirmed against its stored signature, so false positives of the
    banding do not remove documents.
    """

    def __init__(self, threshold: float, num_perm: int = 128):
        # An extra: datasketch pulls in scipy (~110 MB) and near dedup is off by default.
        datasketch = require("datasketch", extra="dedup", feature="near-duplicate removal (--near-dedup)")
        MinHash, MinHashLSH = datasketch.MinHash, datasketch.MinHashLSH

        self._MinHash = MinHash
        self.threshold = threshold
        self.num_perm = num_perm
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.signatures: list[np.ndarray] = []
        self._empty = MinHash(num_perm=num_perm)  # copied for each document (saves the permutation setup)

    def new(self):
        """A fresh MinHash for one document; feed it with `update(m, text)` piece by piece."""
        return self._empty.copy()

    @staticmethod
    def update(m, text: str) -> None:
        grams = shingles(text)
        if grams:
            m.update_batch(grams)

    def is_duplicate(self, m) -> bool:
        """True if `m` is a near duplicate of a kept document; otherwise keeps it and returns False."""
        if m.is_empty():
            return False
        for key in self.lsh.query(m):
            if float(np.mean(self.signatures[key] == m.hashvalues)) >= self.threshold:
                return True
        self.signatures.append(m.hashvalues.astype(np.uint32, copy=True))
        self.lsh.insert(len(self.signatures) - 1, m, check_duplication=False)
        return False


def count_near_duplicates(texts: Iterable[str], threshold: float) -> int:
    """How many of `texts` a NearDuplicateFilter removes (for tests and quick checks)."""
    f = NearDuplicateFilter(threshold)
    removed = 0
    for text in texts:
        m = f.new()
        f.update(m, text)
        removed += f.is_duplicate(m)
    return removed
