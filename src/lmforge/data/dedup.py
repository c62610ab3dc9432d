"""Deduplication: exact (64-bit digests of the cleaned text) and near (MinHash LSH over word 3-grams).

Memory: these are the only parts of `prepare` whose state grows with the corpus, and only with the number
of documents, never their size. Exact dedup keeps one 8-byte digest per kept document in an open-addressing
table at most half full (16-32 bytes per document); near dedup (off by default) keeps a MinHash signature
(512 bytes) plus the LSH band keys per document.

Near dedup has two implementations of the same method (128 permutations, LSH bands chosen the same way, each
candidate confirmed by its signature): `MinHashFilter` (numpy, the default: every permutation of a document's
shingle hashes at once, in uint64 arithmetic) and `NearDuplicateFilter` (the datasketch library, the `dedup`
extra; SHA-1 per shingle in Python, ~3x slower). They hash differently, so their estimates differ: documents far
from the threshold get the same verdict, those right at it may not.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable

import numpy as np

from lmforge.errors import ConfigError
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


NEAR_DEDUP_METHODS = ("numpy", "datasketch")

_U64 = np.uint64
_MAX64 = np.uint64(0xFFFFFFFFFFFFFFFF)
# Odd multipliers (fixed: the hashes must not depend on the process) for the 3-gram hash and the band keys.
_GRAM = (_U64(0x9E3779B97F4A7C15), _U64(0xC2B2AE3D27D4EB4F))
_SHORT = _U64(0x165667B19E3779F9)  # marks the shingle of a text with fewer than n words
_CHAR = np.random.default_rng(0xC4A).integers(1, 1 << 63, size=64, dtype=np.uint64) * _U64(2) + _U64(1)
_BAND = np.random.default_rng(0x1DB).integers(1, 1 << 63, size=256, dtype=np.uint64) | _U64(1)
# Shingles per step of the (shingles x permutations) product: 1024 x 128 x 8 bytes = 1 MB, about an L2 cache.
_STEP = 1024


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place: every output bit depends on every input bit."""
    x ^= x >> _U64(30)
    x *= _U64(0xBF58476D1CE4E5B9)
    x ^= x >> _U64(27)
    x *= _U64(0x94D049BB133111EB)
    x ^= x >> _U64(31)
    return x


_KINDS: np.ndarray | None = None


def _char_kinds() -> np.ndarray:
    """For every code point: 2 in a CJK range (a word by itself), 1 another word character (\\w), 0 else; the
    classes of _WORDS, as a table (1.1 MB, built once)."""
    global _KINDS
    if _KINDS is None:
        every = "".join(map(chr, range(0x110000)))
        kinds = np.zeros(0x110000, dtype=np.uint8)
        for m in re.finditer(r"\w+", every):
            kinds[m.start() : m.end()] = 1
        for m in re.finditer(rf"[{_CJK}]+", every):
            kinds[m.start() : m.end()] = 2
        _KINDS = kinds
    return _KINDS


def word_hashes(text: str, with_starts: bool = False, lower: bool = True):
    """One 64-bit hash per word of `text` (lower-cased), in order: the words `_WORDS.findall` finds, hashed
    from their code points with numpy instead of made into Python strings (the slow part of shingling).
    With with_starts=True, also the index in text.lower() of each word's first character. lower=False: `text`
    is lower-cased already."""
    cp = np.frombuffer((text.lower() if lower else text).encode("utf-32-le"), dtype=np.uint32)
    kind = _char_kinds()[cp]
    inside = np.flatnonzero(kind)  # the characters of words, in order
    if not len(inside):
        empty = np.zeros(0, dtype=np.uint64)
        return (empty, np.zeros(0, dtype=np.int64)) if with_starts else empty
    k = kind[inside]
    # A word starts at a CJK character, or at a word character that does not follow a word character of kind 1.
    starts = k == 2
    prev = np.empty(len(inside), dtype=bool)
    prev[0] = False
    prev[1:] = (inside[1:] == inside[:-1] + 1) & (k[:-1] == 1)
    starts |= ~prev
    first = np.flatnonzero(starts)
    # A word's hash: the sum of its code points (+1), each times a fixed random odd number for its position in the
    # word, then mixed. Two different words of up to 64 characters get the same sum only by a ~2**-60 chance;
    # longer ones reuse the multipliers (position mod 64), so swapping characters 64 apart is not seen.
    pos = inside - np.repeat(inside[first], np.diff(np.append(first, len(inside))))
    v = cp[inside].astype(np.uint64)
    v += _U64(1)
    v *= _CHAR[pos & 63]
    h = _mix64(np.add.reduceat(v, first))
    return (h, inside[first]) if with_starts else h


def _short_shingle(h: np.ndarray, n: int) -> np.ndarray:
    """The hash of the one shingle of texts with fewer than n words (h: their first words, one row per text)."""
    x = np.full(h.shape[0], _SHORT + _U64(n), dtype=np.uint64)
    for i in range(n):
        x *= _GRAM[i % 2]
        x += h[:, i]
    return x


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows): the LSH banding that minimises false positives + false negatives (weights 1/2 each) around
    `threshold`, as datasketch's MinHashLSH chooses it, with the integrals taken on a fine grid."""
    s = np.linspace(0.0, 1.0, 4001)
    best, opt = float("inf"), (1, 1)
    for b in range(1, num_perm + 1):
        r = np.arange(1, num_perm // b + 1, dtype=np.float64)[:, None]
        p = 1.0 - (1.0 - s[None, :] ** r) ** b  # probability that a pair of similarity s becomes a candidate
        lo, hi = s <= threshold, s >= threshold
        fp = np.trapezoid(p[:, lo], s[lo], axis=1)
        fn = np.trapezoid(1.0 - p[:, hi], s[hi], axis=1)
        err = 0.5 * fp + 0.5 * fn
        i = int(np.argmin(err))
        if err[i] < best:
            best, opt = float(err[i]), (b, i + 1)
    return opt


class MinHashFilter:
    """`NearDuplicateFilter` in numpy: the same interface and method, no extra needed, about 3x faster.

    A document's shingles (word 3-grams, as `shingles`) are hashed from 64-bit word hashes (`word_hashes`); the 128
    permutations are h -> a*h + b (mod 2**64, a odd: a bijection), all applied at once to a block of shingle
    hashes, and the signature keeps the top 32 bits of each minimum. LSH bands as datasketch chooses them;
    every candidate is confirmed by the fraction of equal signature entries, so banding never removes a document.
    """

    def __init__(self, threshold: float, num_perm: int = 128, seed: int = 1):
        self.threshold = threshold
        self.num_perm = num_perm
        rng = np.random.default_rng(seed)
        self._a = rng.integers(1, 1 << 63, size=num_perm, dtype=np.uint64) * _U64(2) + _U64(1)
        self._b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) * _U64(2)
        self.bands, self.rows = lsh_bands(threshold, num_perm)
        self._tables: list[dict[int, int | list[int]]] = [{} for _ in range(self.bands)]
        # (permutations x shingles): the minima are then taken along contiguous rows, ~2x faster than across them.
        self._buf = np.empty((num_perm, _STEP), dtype=np.uint64)
        self._blocks: list[np.ndarray] = []  # kept signatures, 4096 rows per block (uint32)
        self.kept = 0

    def new(self) -> np.ndarray:
        """A fresh signature for one document (all maxima: empty); feed it with `update(sig, text)`."""
        return np.full(self.num_perm, _MAX64, dtype=np.uint64)

    def shingle_hashes(self, text: str, n: int = 3) -> np.ndarray:
        """64-bit hashes of the word n-grams of `text` (the set `shingles` returns, hashed)."""
        h = word_hashes(text)
        if not len(h):
            return h
        if len(h) < n:  # one shingle: all the words
            x = _short_shingle(h[None, :], len(h))
        else:
            x = h[: len(h) - n + 1] * _GRAM[0]
            for i in range(1, n):
                x += h[i : len(h) - n + 1 + i]
                if i < n - 1:
                    x *= _GRAM[i % 2]
        return _mix64(x)

    def update(self, sig: np.ndarray, text: str) -> None:
        x = self.shingle_hashes(text)
        for i in range(0, len(x), _STEP):
            m = self._permute(x[i : i + _STEP])
            np.minimum(sig, m.min(axis=1), out=sig)

    def _permute(self, block: np.ndarray) -> np.ndarray:
        """a*h + b (mod 2**64) for every permutation (rows) and shingle hash h of `block` (columns)."""
        m = self._buf[:, : len(block)]
        np.multiply(self._a[:, None], block[None, :], out=m)
        m += self._b[:, None]
        return m

    def signatures(self, docs: list[list[str]]) -> np.ndarray:
        """The signatures (one row per document) that `update` would give each document fed its texts in order,
        computed for many documents at once: a few numpy calls per batch instead of per document."""
        sigs = np.full((len(docs), self.num_perm), _MAX64, dtype=np.uint64)
        texts = [t.lower() for d in docs for t in d]
        if not texts:
            return sigs
        owner = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
        lens = np.array([len(t) + 1 for t in texts], dtype=np.int64)
        # "\n" is not a word character: no word spans two texts.
        h, at = word_hashes("\n".join(texts), with_starts=True, lower=False)
        if not len(h):
            return sigs
        seg = np.searchsorted(np.cumsum(lens), at, side="right")  # the text of each word
        count = np.bincount(seg, minlength=len(texts))
        first = np.cumsum(count) - count  # index of each text's first word
        # Shingle j covers words j..j+2 when they belong to one text; a text of 1-2 words has one shingle, at its
        # first word (where no 3-gram starts).
        x = np.zeros(len(h), dtype=np.uint64)
        ok = np.zeros(len(h), dtype=bool)
        if len(h) >= 3:
            x[:-2] = h[:-2] * _GRAM[0]
            x[:-2] += h[1:-1]
            x[:-2] *= _GRAM[1]
            x[:-2] += h[2:]
            ok[:-2] = seg[:-2] == seg[2:]
        for n in (1, 2):
            at_n = first[count == n]
            x[at_n] = _short_shingle(np.stack([h[at_n + i] for i in range(n)], axis=1), n)
            ok[at_n] = True
        x = _mix64(x[ok])
        doc = owner[seg[ok]]  # non-decreasing
        for i in range(0, len(x), _STEP):
            bdoc = doc[i : i + _STEP]
            m = self._permute(x[i : i + _STEP])
            cols = np.concatenate(([0], np.flatnonzero(np.diff(bdoc)) + 1))
            which = bdoc[cols]  # distinct documents, so the fancy assignment below is safe
            sigs[which] = np.minimum(sigs[which], np.minimum.reduceat(m, cols, axis=1).T)
        return sigs

    def duplicates(self, docs: list[list[str]]) -> list[bool]:
        """`is_duplicate` of each document (its texts in order), in order: later ones are compared with the earlier
        ones kept."""
        sigs = self.signatures(docs)
        empty = (sigs == _MAX64).all(axis=1).tolist()
        sig32 = (sigs >> _U64(32)).astype(np.uint32)
        keys = self._keys(sig32).tolist()
        return [not e and self._decide(s, k) for e, s, k in zip(empty, sig32, keys)]

    def is_duplicate(self, sig: np.ndarray) -> bool:
        """True if `sig` is a near duplicate of a kept document; otherwise keeps it and returns False."""
        if sig[0] == _MAX64 and bool((sig == _MAX64).all()):  # no words at all
            return False
        sig32 = (sig >> _U64(32)).astype(np.uint32)
        return self._decide(sig32, self._keys(sig32[None, :])[0].tolist())

    def _keys(self, sig32: np.ndarray) -> np.ndarray:
        """The LSH band keys (documents x bands) of signatures (documents x permutations)."""
        bands = (
            sig32[:, : self.bands * self.rows].reshape(len(sig32), self.bands, self.rows).astype(np.uint64)
        )
        return _mix64((bands * _BAND[: self.rows]).sum(axis=2, dtype=np.uint64))

    def _decide(self, sig32: np.ndarray, keys: list[int]) -> bool:
        candidates: set[int] = set()
        for table, key in zip(self._tables, keys):
            found = table.get(key)
            if found is not None:
                if isinstance(found, int):
                    candidates.add(found)
                else:
                    candidates.update(found)
        for row in candidates:
            if float(np.mean(self._blocks[row >> 12][row & 4095] == sig32)) >= self.threshold:
                return True
        row = self.kept
        if row & 4095 == 0:
            self._blocks.append(np.empty((4096, self.num_perm), dtype=np.uint32))
        self._blocks[-1][row & 4095] = sig32
        self.kept += 1
        for table, key in zip(self._tables, keys):
            found = table.get(key)
            if found is None:  # most keys have one document: an int, not a list
                table[key] = row
            elif isinstance(found, int):
                table[key] = [found, row]
            else:
                found.append(row)
        return False


def near_duplicate_filter(threshold: float, method: str = "numpy") -> MinHashFilter | NearDuplicateFilter:
    """The near-duplicate filter of `method` ("numpy": MinHashFilter, "datasketch": NearDuplicateFilter)."""
    if method not in NEAR_DEDUP_METHODS:
        raise ConfigError(f"near_dedup_method must be one of {', '.join(NEAR_DEDUP_METHODS)}, not {method!r}")
    return MinHashFilter(threshold) if method == "numpy" else NearDuplicateFilter(threshold)


def count_near_duplicates(texts: Iterable[str], threshold: float, method: str = "datasketch") -> int:
    """How many of `texts` a near-duplicate filter of `method` removes (for tests and quick checks)."""
    f = near_duplicate_filter(threshold, method)
    removed = 0
    for text in texts:
        m = f.new()
        f.update(m, text)
        removed += f.is_duplicate(m)
    return removed
