"""`lmforge prepare`: raw text in, a data directory of token shards out.

Two streaming passes, so memory does not grow with the size of the corpus:

1. read -> clean -> deduplicate every document, appending the cleaned text to a temporary record file
   (and, with split="doc", one split byte per document to a second file);
2. train the tokenizer on the first `tokenizer_train_bytes` of that file (or load one), then encode the
   file in batches and append the ids, each document followed by eos, to the train/val shards.

With a loaded tokenizer and a per-document split, pass 2 needs nothing from the end of pass 1, so each kept
document is encoded as soon as it is kept, in a worker thread that overlaps the cleaning (the same calls in the same
order, so the same shards; LMFORGE_PREPARE_OVERLAP=0 runs the two passes one after the other).

Everything is written into `.tmp-DATA_DIR-<pid>` next to DATA_DIR and renamed into place at the very end
(lmforge.outputs.staged); any error removes the temporary folder, so a DATA_DIR either is complete or does not
exist, and an existing one (replaced with overwrite=True) goes only once the new one is complete.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shutil
import struct
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lmforge.data.clean import HTML_MODES, NORMALIZATION_FORMS, Cleaner, load_stopwords
from lmforge.data.dedup import NEAR_DEDUP_METHODS, DigestSet, near_duplicate_filter
from lmforge.data.scrub import Scrubber, ScrubOptions, add_counts
from lmforge.data.shards import MANIFEST_FORMAT, SHARD_TOKENS, ShardWriter, token_dtype
from lmforge.data.sources import PIECE_CHARS, Source, check_encoding, expand_inputs, iter_pieces
from lmforge.errors import ConfigError, DataError, EmptySplitError, TokenizerError
from lmforge.outputs import check_inputs, check_output, staged, staging_path
from lmforge.tokenizers.tokenizer import KINDS, Tokenizer
from lmforge.version import __version__

__all__ = ["prepare", "iter_documents", "iter_clean_documents", "text_convention"]

# auto: "doc", or "tail" (with a one-line notice) when a per-document split would leave a split empty, as a single
# text file does: the most common first input should prepare with no extra flag.
SPLITS = ("auto", "doc", "tail")
DOC_SPLITS = ("file", "paragraph", "line")
# A per-document split writes one of these bytes per kept document to a side file in pass 1.
SPLIT_BYTES = {"train": b"\x00", "val": b"\x01", "test": b"\x02"}
# The largest vocabulary a new tokenizer may have: the native trainers allocate tables of vocab_size entries up
# front (--vocab-size 1e12 aborts the process), and real vocabularies stay far below it (GPT-4o: ~200k tokens).
MAX_VOCAB_SIZE = 1 << 21

# Record file of pass 1: a header (flags, length) then that many bytes of UTF-8 text. A document is the
# records up to and including one with the LAST flag; most documents are exactly one record.
_RECORD = struct.Struct("<BI")
_LAST = 1
# Cleaned text of one document is held in memory up to this size, then written out as a record.
FLUSH_BYTES = 1 << 20
# Pass 2 encodes chunks of at most about this many bytes (long documents are cut where the tokens do not
# change), this many chunks or bytes at a time; the Rust tokenizer spreads a batch over the cores.
ENCODE_CHUNK_BYTES = 1 << 16
ENCODE_BATCH_DOCS = 2048
ENCODE_BATCH_BYTES = 4 << 20
# Batched near-duplicate verdicts: the cleaned text of this many bytes of documents waits for its signatures.
NEAR_BATCH_BYTES = 1 << 20


# ---- reading ------------------------------------------------------------------------------------------
def iter_documents(
    inputs: str | Iterable[str],
    text_field: str = "text",
    doc_split: str = "file",
    encoding: str = "utf-8",
) -> Iterator[str]:
    """The raw (uncleaned) documents of `inputs` in order, read like `prepare` reads them.

    Each document is returned whole, so a single huge file with doc_split="file" is held in memory;
    `prepare` itself never does that.
    """
    if doc_split not in DOC_SPLITS:
        raise ConfigError(f"doc_split must be one of {', '.join(DOC_SPLITS)}, not {doc_split!r}")
    check_encoding(encoding)
    for source in expand_inputs(inputs):
        parts: list[str] = []
        for piece, last in iter_pieces(source, text_field, doc_split, encoding):
            parts.append(piece)
            if last:
                yield "".join(parts)
                parts = []


# What a prepared stream records about how text became tokens (the manifest's options, kept in each checkpoint's
# config by pretraining): scoring a raw text file must read, clean and end documents the same way.
CONVENTION_KEYS = (
    "doc_split",
    "text_field",
    "html",
    "normalize",
    "clean_whitespace",
    "segment",
    "stopwords",
    "stem",
)


def text_convention(manifest: dict) -> dict:
    """How a data directory turned text into its token stream: the reading and cleaning options of
    CONVENTION_KEYS, and `eos_after` ("document": every document is followed by the end-of-sequence token)."""
    options = manifest.get("options", {})
    return {
        **{key: options[key] for key in CONVENTION_KEYS if key in options},
        "eos_after": manifest.get("eos_after", "document"),
    }


def iter_clean_documents(
    inputs: str | Iterable[str], convention: dict, encoding: str = "utf-8"
) -> Iterator[str]:
    """The documents of `inputs` read and cleaned as `prepare` did under `convention` (text_convention's keys;
    missing ones take prepare's defaults), without its deduplication: every non-empty document, in order."""
    stopwords = convention.get("stopwords")
    cleaner = Cleaner(
        html=convention.get("html", "auto"),
        normalize=convention.get("normalize", "NFC"),
        clean_whitespace=convention.get("clean_whitespace", True),
        segment=convention.get("segment", False),
        stopwords=load_stopwords(stopwords) if stopwords else None,
        stem=convention.get("stem"),
    )
    doc_split = convention.get("doc_split", "file")
    if doc_split not in DOC_SPLITS:
        raise ConfigError(f"doc_split must be one of {', '.join(DOC_SPLITS)}, not {doc_split!r}")
    check_encoding(encoding)
    for source in expand_inputs(inputs):
        parts: list[str] = []
        doc = None
        for piece, last in iter_pieces(
            source, convention.get("text_field", "text"), doc_split, encoding, PIECE_CHARS
        ):
            if doc is None:
                doc = cleaner.document(html_source=source.kind == "html")
            parts.append(doc.feed(piece, last))
            if last:
                text = "".join(parts)
                if text and not text.isspace():
                    yield text
                parts, doc = [], None


def _records(path: Path, start: int = 0) -> Iterator[tuple[bytes, bool]]:
    with open(path, "rb", buffering=1 << 20) as fh:
        fh.seek(start)
        while header := fh.read(_RECORD.size):
            flags, n = _RECORD.unpack(header)
            yield fh.read(n), bool(flags & _LAST)


def _training_texts(path: Path, limit: int, on_bytes=None) -> Iterator[str]:
    """Cleaned text for the tokenizer: the first `limit` bytes of the record file."""
    left = limit
    for data, _ in _records(path):
        if left <= 0:
            return
        if data:
            # errors="ignore" drops a character cut in half by the byte limit.
            yield data[:left].decode("utf-8", errors="ignore")
            if on_bytes is not None:
                on_bytes(min(len(data), left))
            left -= len(data)


# ---- progress ---------------------------------------------------------------------------------------
class _Progress:
    """A rich progress bar on stderr (bytes, MB/s, documents), only when stderr is a terminal."""

    def __init__(self, enabled: bool):
        stderr = sys.stderr
        self.enabled = bool(enabled and getattr(stderr, "isatty", lambda: False)())
        self._bar = None
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TextColumn("{task.fields[docs]:,} docs"),
                TimeElapsedColumn(),
                console=Console(file=stderr),
            )
            self._bar.start()

    def task(self, description: str, total: int | None):
        return self._bar.add_task(description, total=total, docs=0) if self._bar else None

    def update(self, task, **kwargs) -> None:
        if self._bar is not None:
            self._bar.update(task, **kwargs)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


# ---- pass 1: read, clean, deduplicate ---------------------------------------------------------------------
@dataclasses.dataclass
class _Kept:
    """A document that passed the empty and exact-duplicate checks: what keeping it needs."""

    last_record: bytes  # its text, or the part not yet written (written: the rest went out early)
    nbytes: int
    digest: bytes
    forced_val: bool | None
    written: bool
    start: int  # where its records begin, when written early
    scrub: object  # its PII scrubber stream (for the counts), or None


class _Pass1:
    """Streams every source through the cleaner and the deduplicators into the record file."""

    def __init__(
        self,
        opts: dict,
        cleaner: Cleaner,
        docs_fh,
        splits_fh,
        scrubber: Scrubber | None = None,
        encoder: _Encoder | None = None,
    ):
        self.opts = opts
        # Given an encoder (a loaded tokenizer, a per-document split), each kept document goes to it at once, so
        # encoding (in its thread) overlaps reading and cleaning instead of waiting for a second pass.
        self.encoder = encoder
        self.records_path = Path(docs_fh.name) if encoder is not None else None
        self.cleaner = cleaner
        self.scrubber = scrubber  # --scrub-pii: PII replaced after cleaning, before deduplication
        self.pii: dict[str, int] = {}  # items replaced, per type, in the documents kept
        self.docs_fh = docs_fh
        self.splits_fh = splits_fh  # one byte per kept document (SPLIT_BYTES), used by a per-document split
        # Keyed by the seed: the split of a document depends on (seed, text) only.
        key = hashlib.blake2b(f"lmforge-prepare-split:{opts['seed']}".encode(), digest_size=32).digest()
        self._hash0 = hashlib.blake2b(digest_size=16, key=key)  # copied for each document
        # Exact dedup: one 8-byte digest per document (O(#documents), never O(corpus bytes)).
        self.digests = DigestSet() if opts["dedup"] else None
        near = opts["near_dedup"]
        self.near = near_duplicate_filter(near, opts["near_dedup_method"]) if near else None
        # A filter that computes many signatures at once gets the documents in batches: their verdicts wait in
        # `pending` (exact dedup has passed) until NEAR_BATCH_BYTES of them, the end of a source, or a document
        # big enough to be written early (its own signature is then streamed, piece by piece).
        self.batched = hasattr(self.near, "duplicates")
        self.pending: list[tuple[_Kept, list[str]]] = []
        self.pending_bytes = 0
        self.removed = {"empty": 0, "duplicates": 0, "near_duplicates": 0}
        # Documents and bytes of each split, as the per-document split decides (a tail split decides later).
        self.kept = {name: [0, 0] for name in SPLIT_BYTES}
        self.total_bytes = 0
        self.documents = 0

    def _start(self, source: Source) -> None:
        # With --val files the split is given: their documents are val, every other one is train.
        self.forced_val = source.val if self.opts["val_inputs"] else None
        self.doc = self.cleaner.document(html_source=source.kind == "html")
        self.scrub = self.scrubber.stream() if self.scrubber is not None else None
        self.hash = self._hash0.copy()
        self.minhash = self.near.new() if self.near and not self.batched else None
        self.texts: list[str] = []  # the cleaned pieces, for a batched near-duplicate verdict
        self.buf: list[bytes] = []
        self.buf_bytes = 0
        self.nbytes = 0
        self.has_text = False
        self.start = -1  # where the document's records begin, known once one is written early
        self.written = False

    def _write(self, data: bytes, last: bool) -> None:
        self.docs_fh.write(_RECORD.pack(_LAST if last else 0, len(data)))
        self.docs_fh.write(data)

    def _drop(self, reason: str) -> None:
        self.removed[reason] += 1
        if self.written:  # a many-MB document already partly written: take it back
            self.docs_fh.seek(self.start)
            self.docs_fh.truncate()

    def _feed(self, piece: str, last: bool) -> None:
        text = self.doc.feed(piece, last)
        if self.scrub is not None:
            text = self.scrub.feed(text, last)
        if text:
            data = text.encode("utf-8")
            self.hash.update(data)
            self.nbytes += len(data)
            if self.minhash is not None:
                self.near.update(self.minhash, text)
            elif self.near is not None:
                self.texts.append(text)
            if not self.has_text and not text.isspace():
                self.has_text = True
            self.buf.append(data)
            self.buf_bytes += len(data)
            if self.buf_bytes >= FLUSH_BYTES and not last:
                if not self.written:
                    if self.near is not None and self.minhash is None:  # batched: stream this one instead
                        self._resolve()
                        self.minhash = self.near.new()
                        for t in self.texts:
                            self.near.update(self.minhash, t)
                        self.texts = []
                    self.start = self.docs_fh.tell()
                self._write(b"".join(self.buf), last=False)
                self.written = True
                self.buf, self.buf_bytes = [], 0

    def _finish(self) -> None:
        """Decide the document's fate (a batched near-duplicate verdict may come later, in _resolve)."""
        if not self.has_text:
            self._drop("empty")
            return
        digest = self.hash.digest()
        if self.digests is not None and not self.digests.add(int.from_bytes(digest[:8], "little")):
            self._drop("duplicates")
            return
        doc = _Kept(
            b"".join(self.buf), self.nbytes, digest, self.forced_val, self.written, self.start, self.scrub
        )
        self.buf = []
        if self.near is None:
            self._keep(doc)
        elif (
            self.minhash is not None
        ):  # streamed signature (an unbatched filter, or a document written early)
            self._resolve()
            if self.near.is_duplicate(self.minhash):
                self._drop("near_duplicates")
            else:
                self._keep(doc)
        else:
            self.pending.append((doc, self.texts))
            self.pending_bytes += self.nbytes
            if self.pending_bytes >= NEAR_BATCH_BYTES:
                self._resolve()

    def _resolve(self) -> None:
        """The near-duplicate verdicts of the pending documents, in order; the kept ones are kept in order."""
        if not self.pending:
            return
        pending, self.pending, self.pending_bytes = self.pending, [], 0
        for (doc, _), duplicate in zip(pending, self.near.duplicates([texts for _, texts in pending])):
            if duplicate:
                self.removed["near_duplicates"] += 1  # never written early: nothing to take back
            else:
                self._keep(doc)

    def _keep(self, doc: _Kept) -> None:
        self._write(doc.last_record, last=True)
        # One uniform draw per document: [0, val) is val, [val, val + test) is test, so the val documents are
        # those of a run without a test split. Given --val files, the test documents come from [0, test).
        u = int.from_bytes(doc.digest[8:], "big") / 2.0**64
        vf, tf = self.opts["val_fraction"], self.opts["test_fraction"]
        if doc.forced_val is not None:
            split = "val" if doc.forced_val else "test" if u < tf else "train"
        else:
            split = "val" if u < vf else "test" if u < vf + tf else "train"
        if self.splits_fh is not None:
            self.splits_fh.write(SPLIT_BYTES[split])
            self.kept[split][0] += 1
            self.kept[split][1] += doc.nbytes
        if self.encoder is not None:
            self._encode_kept(split, doc)
        self.total_bytes += doc.nbytes
        self.documents += 1
        self.source_docs += 1
        self.source_bytes += doc.nbytes
        if doc.scrub is not None:
            add_counts(self.pii, doc.scrub.counts)

    def _encode_kept(self, split: str, doc: _Kept) -> None:
        """Hand the document just kept to the encoder, record by record, as pass 2 would read them."""
        if not doc.written:
            self.encoder.add(split, doc.last_record)
        else:  # written early: read its records back (one at a time: memory stays bounded)
            self.docs_fh.flush()
            for data, _ in _records(self.records_path, doc.start):
                self.encoder.add(split, data)
        self.encoder.end(split)

    def run(self, sources: list[Source], progress: _Progress) -> list[dict]:
        opts = self.opts
        sizes_known = all(s.size is not None for s in sources)
        task = progress.task("cleaning", sum(s.size for s in sources) if sizes_known else None)
        done = 0  # input bytes of the sources finished
        per_source = []
        for source in sources:
            self.source_docs = self.source_bytes = 0
            seen = 0  # characters read from this source (an estimate of its bytes, for the bar)
            new_doc = True
            for piece, last in iter_pieces(
                source, opts["text_field"], opts["doc_split"], opts["encoding"], PIECE_CHARS
            ):
                if new_doc:
                    self._start(source)
                    new_doc = False
                self._feed(piece, last)
                seen += len(piece)
                if last:
                    self._finish()
                    new_doc = True
                    if progress.enabled and (self.documents % 512 == 0 or len(piece) > 65536):
                        progress.update(
                            task, completed=done + min(seen, source.size or seen), docs=self.documents
                        )
            self._resolve()
            done += source.size if source.size is not None else seen
            progress.update(task, completed=done, docs=self.documents)
            per_source.append(
                {
                    "path": source.path,
                    "documents": self.source_docs,
                    "bytes": self.source_bytes,
                    **({"val": True} if source.val else {}),
                }
            )
        return per_source


# ---- pass 2: encode and write shards ------------------------------------------------------------------
_WHITESPACE = b" \t\n\r\x0b\x0c"


def _chunk_cut(buf: bytes, start: int, limit: int) -> int:
    """Where to split buf[start:] near `limit` so that the tokens do not change: before a space that follows
    a non-space (word-level, byte-level and metaspace pre-tokenizers all split there anyway), else after a
    newline followed by a non-space, else at any character boundary."""
    lo = start + (limit - start) // 4
    i = buf.rfind(b" ", lo, limit)
    while i > lo:
        if buf[i - 1] not in _WHITESPACE:
            return i
        i = buf.rfind(b" ", lo, i)
    j = buf.rfind(b"\n", lo, limit - 1)
    while j >= lo:
        if buf[j + 1] not in _WHITESPACE:
            return j + 1
        j = buf.rfind(b"\n", lo, j)
    cut = limit
    while cut > start + 1 and (buf[cut] & 0xC0) == 0x80:  # not inside a UTF-8 sequence
        cut -= 1
    return cut


class _Encoder:
    """Appends the token ids of each split's text, plus eos at document ends, to that split's shards.

    Text arrives in records of up to a few MB. It is re-cut into chunks of about ENCODE_CHUNK_BYTES at
    places where cutting does not change the tokens (so the ids do not depend on how the text was read),
    and chunks are encoded in batches, which the Rust tokenizer spreads over the cores. Small chunks keep
    the memory of the encodings small.
    """

    def __init__(
        self,
        tok: Tokenizer,
        writers: dict[str, ShardWriter],
        eos_id: int,
        progress: _Progress,
        task,
        overlap: bool = False,
    ):
        self.writers = writers
        self.eos = eos_id
        self.progress = progress
        self.task = task
        self._encode = tok.encode_batch
        self.items: list[tuple[str, str, bool]] = []  # (split, text, eos after it)
        self.batch_bytes = 0
        self.stats = {s: {"documents": 0, "bytes": 0} for s in writers}
        self.part_bytes = {s: 0 for s in writers}  # bytes of the current document's part in each split
        self.carry = {s: b"" for s in writers}  # text of that part not yet queued for encoding
        # overlap: a batch is encoded and written in a worker thread while the next one is gathered (encoding
        # releases the GIL). One batch in flight at most, so memory stays at two batches; the order is kept.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lmforge-encode") if overlap else None
        self._pending: Future | None = None

    def add(self, split: str, data: bytes) -> None:
        if not data:
            return
        self.stats[split]["bytes"] += len(data)
        self.part_bytes[split] += len(data)
        buf = self.carry[split] + data if self.carry[split] else data
        start = 0
        while len(buf) - start > ENCODE_CHUNK_BYTES:
            cut = _chunk_cut(buf, start, start + ENCODE_CHUNK_BYTES)
            self._queue(split, buf[start:cut], False)
            start = cut
        self.carry[split] = buf[start:]

    def end(self, split: str) -> None:
        """The current document's part in `split` ends: its last chunk, then eos (if the part has any text)."""
        if self.part_bytes[split]:
            self._queue(split, self.carry[split], True)
            self.carry[split] = b""
            self.stats[split]["documents"] += 1
            self.part_bytes[split] = 0

    def _queue(self, split: str, data: bytes, eos: bool) -> None:
        self.items.append((split, data.decode("utf-8"), eos))
        self.batch_bytes += len(data)
        if len(self.items) >= ENCODE_BATCH_DOCS or self.batch_bytes >= ENCODE_BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Encode and write the batch gathered so far (in the worker thread, with overlap)."""
        if not self.items:
            return
        docs = sum(s["documents"] for s in self.stats.values())
        batch = (self.items, self.batch_bytes, docs)
        self.items, self.batch_bytes = [], 0
        if self._pool is None:
            self._write_batch(*batch)
            return
        self.wait()
        self._pending = self._pool.submit(self._write_batch, *batch)

    def wait(self) -> None:
        """Until the batch in flight is written; raises its error, if any."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        """Flush, wait for the last batch and stop the worker thread."""
        try:
            self.flush()
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def abort(self) -> None:
        """Stop the worker thread without waiting for errors (the run failed or is done)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _write_batch(self, items: list[tuple[str, str, bool]], nbytes: int, docs: int) -> None:
        ids = self._encode([t for _, t, _ in items])
        out: dict[str, list[int]] = {s: [] for s in self.writers}
        for (split, _, eos), seq in zip(items, ids):
            out[split] += seq
            if eos:
                out[split].append(self.eos)
        for split, seq in out.items():
            if seq:
                self.writers[split].write(seq)
        self.progress.update(self.task, advance=nbytes, docs=docs)


def _tail_cut(
    data: bytes, local: int, start_ok: bool, doc_end: bool, pos: int, total: int, lo: int = 0
) -> int:
    """Where to cut a record (starting at byte `pos` of the corpus) at a split boundary: the line boundary
    closest to byte `local`.

    The record's start counts when it is a line boundary (`start_ok`), its end when it ends the document.
    Cuts that would leave a split empty (the one that started at byte `lo`, or the rest) are avoided when
    possible; a text without any line break is cut at a space, else at a character boundary.
    """
    n = len(data)
    candidates = set()
    left, right = data.rfind(b"\n", 0, local), data.find(b"\n", local)
    if left >= 0:
        candidates.add(left + 1)
    if right >= 0:
        candidates.add(right + 1)
    if not candidates:
        left, right = data.rfind(b" ", 0, local), data.find(b" ", local)
        candidates.update(c + 1 for c in (left, right) if c >= 0)
    if start_ok:
        candidates.add(0)
    if doc_end:
        candidates.add(n)
    usable = [c for c in candidates if lo < pos + c < total]
    if usable:
        cut = min(usable, key=lambda c: (abs(c - local), c))
    else:
        cut = min(max(local, 0), n)
        while cut < n and (data[cut] & 0xC0) == 0x80:  # inside a UTF-8 sequence
            cut += 1
    while cut < n and data[cut] == 0x0A:  # val does not start with blank lines
        cut += 1
    return cut


def _encode_doc_split(records_path: Path, splits_path: Path, enc: _Encoder) -> None:
    names = {byte: name for name, byte in SPLIT_BYTES.items()}
    with open(splits_path, "rb", buffering=1 << 16) as splits:
        split = None
        for data, last in _records(records_path):
            if split is None:
                split = names[splits.read(1)]
            enc.add(split, data)
            if last:
                enc.end(split)
                split = None


def _encode_tail_split(records_path: Path, enc: _Encoder, total: int, tail: list[tuple[str, int]]) -> None:
    """Train is the start of the corpus, then each (split, bytes) of `tail` in order (val, then test), each cut
    at the line break closest to its share."""
    names = ["train"] + [name for name, _ in tail]
    bounds = []  # where split i + 1 starts
    start = total - sum(n for _, n in tail)
    for _, n in tail:
        bounds.append(start)
        start += n
    cur = 0  # index of the split receiving text
    pos = 0
    lo = 0  # where the current split started
    line_start = True  # the next record starts a line (a document, or after a record ending with \n)
    for data, last in _records(records_path):
        off = 0  # bytes of this record already given to earlier splits
        end = pos + len(data)
        while cur < len(bounds) and (end > bounds[cur] or (end == bounds[cur] and last)):
            rest = data[off:]
            start_ok = line_start if off == 0 else data[off - 1] == 0x0A
            local = max(0, bounds[cur] - (pos + off))
            cut = _tail_cut(rest, local, start_ok, last, pos + off, total, lo)
            enc.add(names[cur], rest[:cut])
            enc.end(names[cur])
            off += cut
            lo = pos + off
            cur += 1
        enc.add(names[cur], data[off:])
        pos = end
        line_start = last or (data.endswith(b"\n") if data else line_start)
        if last:
            for name in names:
                enc.end(name)


# ---- the whole thing ----------------------------------------------------------------------------------
def _check_options(o: dict) -> dict:
    if o["split"] not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, not {o['split']!r}")
    if o["doc_split"] not in DOC_SPLITS:
        raise ConfigError(f"doc_split must be one of {', '.join(DOC_SPLITS)}, not {o['doc_split']!r}")
    if o["html"] not in HTML_MODES:
        raise ConfigError(f"html must be one of {', '.join(HTML_MODES)}, not {o['html']!r}")
    norm = o["normalize"]
    if norm is not None and (
        not isinstance(norm, str) or norm.upper() not in (*NORMALIZATION_FORMS, "NONE", "")
    ):
        raise ConfigError(f"normalize must be one of {', '.join(NORMALIZATION_FORMS)} or none, not {norm!r}")
    o["normalize"] = None if norm is None or norm.upper() in ("NONE", "") else norm.upper()
    vf = o["val_fraction"]
    if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0 < vf < 1:
        raise DataError(
            f"val_fraction must be strictly between 0 and 1, not {vf!r}; for example --val-fraction 0.1"
        )
    tf = o["test_fraction"]
    if isinstance(tf, bool) or not isinstance(tf, (int, float)) or not 0 <= tf < 1:
        raise DataError(
            f"test_fraction must be at least 0 and below 1, not {tf!r}; for example --test-fraction 0.1"
        )
    if vf + tf >= 1 and not o["val_inputs"]:
        raise DataError(
            f"val_fraction {vf} + test_fraction {tf} leave nothing for training; their sum must be below 1"
        )
    near = o["near_dedup"]
    if near is not None and (
        isinstance(near, bool) or not isinstance(near, (int, float)) or not 0 < near < 1
    ):
        raise ConfigError(
            f"near_dedup must be a Jaccard threshold strictly between 0 and 1, not {near!r}; for example --near-dedup 0.8"
        )
    if o["near_dedup_method"] not in NEAR_DEDUP_METHODS:
        raise ConfigError(
            f"near_dedup_method must be one of {', '.join(NEAR_DEDUP_METHODS)}, not {o['near_dedup_method']!r}"
        )
    tb = o["tokenizer_train_bytes"]
    if isinstance(tb, bool) or not isinstance(tb, int) or tb <= 0:
        raise ConfigError(f"tokenizer_train_bytes must be a positive number of bytes, not {tb!r}")
    vs = o["vocab_size"]
    if vs is not None and (isinstance(vs, bool) or not isinstance(vs, int) or vs <= 0):
        raise TokenizerError(f"vocab_size must be a positive integer, not {vs!r}")
    if vs is not None and vs > MAX_VOCAB_SIZE and o["tokenizer"] in KINDS:
        raise TokenizerError(
            f"--vocab-size {vs:,} is too large; a new tokenizer has at most {MAX_VOCAB_SIZE:,} tokens"
        )
    if not isinstance(o["seed"], int) or isinstance(o["seed"], bool):
        raise ConfigError(f"seed must be an integer, not {o['seed']!r}")
    check_encoding(o["encoding"])
    return o


def _load_tokenizer(spec: str) -> Tokenizer | None:
    """None when `spec` is a kind to train; the loaded tokenizer when it is a path (vocab_size is then unused)."""
    if spec in KINDS:
        return None
    if not Path(spec).exists():
        raise TokenizerError(
            f"--tokenizer {spec!r} is neither a tokenizer kind ({', '.join(KINDS)}) nor an existing "
            f"tokenizer.json file or folder"
        )
    # A run directory: its latest checkpoint's tokenizer (the pointer is a symlink, or a file naming the checkpoint
    # where there are no symlinks; lmforge.checkpoint).
    latest = Path(spec) / "latest"
    if latest.is_file():
        latest = latest.parent / latest.read_text(encoding="utf-8").strip()
    if not (Path(spec) / "tokenizer.json").is_file() and (latest / "tokenizer.json").is_file():
        return Tokenizer.load(latest)
    return Tokenizer.load(spec)


def prepare(
    inputs: str | list[str],
    out: str | os.PathLike,
    tokenizer: str = "bpe",
    vocab_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    text_field: str = "text",
    split: str = "auto",
    doc_split: str = "file",
    html: str = "auto",
    normalize: str | None = "NFC",
    clean_whitespace: bool = True,
    dedup: bool = True,
    near_dedup: float | None = None,
    segment: bool = False,
    stopwords: str | None = None,
    stem: str | None = None,
    encoding: str = "utf-8",
    tokenizer_train_bytes: int = 200_000_000,
    overwrite: bool = False,
    progress: bool = True,
    val_inputs: list[str] | None = None,
    scrub_pii: bool | ScrubOptions = False,
    test_fraction: float = 0.0,
    near_dedup_method: str = "numpy",
) -> dict:
    """Clean `inputs`, train (or load) a tokenizer and write train/val (and, with `test_fraction`, test) token
    shards into `out`.

    Returns the manifest, also written to `out/manifest.json`. See `lmforge prepare --help` for the options.
    `tokenizer` is a kind to train ("char", "bpe", "wordpiece", "unigram") or the path of a tokenizer.json
    (or of a folder holding one) to use as it is; `vocab_size` only matters when training.
    `val_inputs` (e.g. a benchmark's own validation file) become the validation split as they are, instead of
    a held-out fraction of `inputs`. `split` "doc" sends each document to a split by a seeded hash of its text,
    "tail" holds out the end of the corpus, "auto" is "doc" unless that would leave a split empty (a single
    document, say): then "tail", with a one-line notice on stderr. `test_fraction` also holds out a test split,
    after val. `near_dedup_method` computes the MinHash signatures of `near_dedup` with numpy ("numpy", the
    default) or with the datasketch library ("datasketch", the `dedup` extra; slower; lmforge.data.dedup). `scrub_pii` replaces personal data and secrets in the cleaned text with
    typed placeholders (lmforge.data.scrub, as `lmforge scrub` does; a ScrubOptions chooses the types and a
    finder of names); the manifest's "pii" counts them per type.
    Raises DataError / TokenizerError / ConfigError (one sentence each) for unusable inputs or options.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [os.fspath(i) for i in inputs]
    val_inputs = [os.fspath(i) for i in val_inputs] if val_inputs else []
    if val_inputs and split == "tail":
        raise ConfigError("--val gives the validation split itself; it cannot be combined with --split tail")
    tokenizer = os.fspath(tokenizer)
    opts = _check_options(
        {
            "inputs": inputs,
            "val_inputs": val_inputs,
            "tokenizer": tokenizer,
            "vocab_size": vocab_size,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "seed": seed,
            "text_field": text_field,
            "split": split,
            "doc_split": doc_split,
            "html": html,
            "normalize": normalize,
            "clean_whitespace": bool(clean_whitespace),
            "dedup": bool(dedup),
            "near_dedup": near_dedup,
            "near_dedup_method": near_dedup_method,
            "segment": bool(segment),
            "stopwords": stopwords,
            "stem": stem,
            "encoding": encoding,
            "tokenizer_train_bytes": tokenizer_train_bytes,
            "scrub_pii": bool(scrub_pii),
            "scrub": scrub_pii if isinstance(scrub_pii, ScrubOptions) else ScrubOptions(),
        }
    )
    out = check_output(out, overwrite=bool(overwrite), error=DataError)
    tmp = staging_path(out)
    sources = expand_inputs(inputs, exclude=[out, tmp])
    if val_inputs:
        sources += [dataclasses.replace(s, val=True) for s in expand_inputs(val_inputs, exclude=[out, tmp])]
    if out.is_dir():
        check_inputs(out, [s.path for s in sources if s.kind != "stdin"], error=DataError)
    stop = load_stopwords(stopwords) if stopwords else None
    loaded = _load_tokenizer(tokenizer)
    cleaner = Cleaner(
        html=html,
        normalize=opts["normalize"],
        clean_whitespace=clean_whitespace,
        segment=segment,
        stopwords=stop,
        stem=stem,
    )

    bar = _Progress(progress)
    try:
        with staged(out, tmp=tmp):
            manifest = _run(opts, sources, cleaner, loaded, tmp, bar)
    finally:
        bar.close()
    return manifest


def overlap_enabled() -> bool:
    """Whether encoding overlaps reading and cleaning (a worker thread; the same shards). LMFORGE_PREPARE_OVERLAP=0
    turns it off: one thread, two passes one after the other, as before."""
    return os.environ.get("LMFORGE_PREPARE_OVERLAP", "1") != "0"


def _ids_dtype(tok: Tokenizer) -> np.dtype:
    n_ids = max(tok.vocab_size, max(tok.hf.get_vocab(with_added_tokens=True).values(), default=0) + 1)
    return token_dtype(n_ids)


def _pass2(
    tok: Tokenizer, tmp: Path, names: tuple, dtype, bar: _Progress, total: int | None, overlap: bool
) -> tuple[dict[str, ShardWriter], _Encoder]:
    writers = {name: ShardWriter(tmp / name, dtype, shard_tokens=SHARD_TOKENS) for name in names}
    return writers, _Encoder(tok, writers, tok.eos_id, bar, bar.task("encoding", total), overlap=overlap)


def _run(
    opts: dict, sources: list[Source], cleaner: Cleaner, loaded: Tokenizer | None, tmp: Path, bar: _Progress
) -> dict:
    records_path = tmp / "cleaned.records"
    splits_path = tmp / "splits.bytes"
    doc_mode = opts["split"] != "tail"  # auto decides after pass 1, from the per-document split it records
    names = ("train", "val", "test") if opts["test_fraction"] else ("train", "val")
    overlap = overlap_enabled()
    # With a loaded tokenizer and a per-document split nothing waits for the end of pass 1: kept documents are
    # encoded while the next ones are cleaned. (A tokenizer without eos takes the two-pass path, which reports it
    # after pass 1's own errors, as before.)
    fused = overlap and doc_mode and loaded is not None and loaded.eos_id is not None
    enc = writers = None
    if fused:
        dtype = _ids_dtype(loaded)
        loaded.save(tmp)
        writers, enc = _pass2(loaded, tmp, names, dtype, bar, None, overlap)
    try:
        with open(records_path, "wb", buffering=1 << 20) as docs_fh:
            splits_fh = open(splits_path, "wb", buffering=1 << 16) if doc_mode else None
            try:
                scrubber = Scrubber(opts["scrub"]) if opts["scrub_pii"] else None
                p1 = _Pass1(opts, cleaner, docs_fh, splits_fh, scrubber, encoder=enc)
                per_source = p1.run(sources, bar)
            finally:
                if splits_fh is not None:
                    splits_fh.close()
        if enc is not None:
            enc.close()
    finally:
        if enc is not None:
            enc.abort()
            for w in writers.values():
                w.close()

    removed = p1.removed
    if p1.documents == 0:
        raise DataError(
            f"no text left after cleaning ({removed['empty']} empty documents, {removed['duplicates']} duplicates, "
            f"{removed['near_duplicates']} near duplicates); check the inputs, --text-field and --html"
        )
    tail = [(name, round(p1.total_bytes * opts[f"{name}_fraction"])) for name in names[1:]]
    advice = "use --split tail, --doc-split paragraph (or line), or give more documents"
    n = p1.documents
    plural = "document" if n == 1 else "documents"
    if doc_mode:
        empty = next(
            (name for name in ("val", "test", "train") if name in names and not p1.kept[name][0]), None
        )
        if empty is not None and opts["split"] == "auto" and not opts["val_inputs"]:
            why = "the corpus is a single document" if n == 1 else f"no document of the {n} fell into {empty}"
            print(
                f"note: {why}, so the end of the text is held out instead (--split tail); "
                "--doc-split line or paragraph splits by document",
                file=sys.stderr,
            )
            doc_mode, opts["split"] = False, "tail"
        elif empty is not None:
            if n == 1:
                raise EmptySplitError(
                    f"the corpus is a single document after cleaning and deduplication, so the {empty} "
                    f"split would be empty; {advice}"
                )
            given = f"--val-fraction {opts['val_fraction']}" + (
                f" and --test-fraction {opts['test_fraction']}" if opts["test_fraction"] else ""
            )
            raise EmptySplitError(
                f"the {empty} split would be empty: none of the {n} documents left after cleaning and "
                f"deduplication falls into it with {given}; {advice}"
            )
        else:
            opts["split"] = "doc"
    if not doc_mode and (any(b == 0 for _, b in tail) or sum(b for _, b in tail) >= p1.total_bytes):
        held = " and ".join(f"a {name} split of {opts[f'{name}_fraction']}" for name, _ in tail)
        raise DataError(
            f"the corpus has only {p1.total_bytes} bytes of text after cleaning, too few for {held}; "
            "give more text or change the fractions"
        )

    if (
        fused and not doc_mode
    ):  # auto fell back to a tail split: the shards written so far go, pass 2 remakes them
        fused = False
        for name in names:
            shutil.rmtree(tmp / name)

    # ---- tokenizer
    if fused:
        tok = loaded
    elif loaded is None:
        limit = opts["tokenizer_train_bytes"]
        task = bar.task(f"training {opts['tokenizer']} tokenizer", min(limit, p1.total_bytes))
        tok = Tokenizer.train(
            opts["tokenizer"],
            _training_texts(records_path, limit, lambda n: bar.update(task, advance=n)),
            opts["vocab_size"],
        )
    else:
        tok = loaded
    eos = tok.eos_id
    if eos is None:
        raise TokenizerError(
            f"tokenizer {opts['tokenizer']} has no end-of-sequence token (like <|eos|>, </s> or <|endoftext|>); "
            f"add one or train a new tokenizer"
        )

    # ---- pass 2 (done already when fused)
    if not fused:
        dtype = _ids_dtype(tok)
        tok.save(tmp)
        writers, enc = _pass2(tok, tmp, names, dtype, bar, p1.total_bytes, overlap)
        try:
            if doc_mode:
                _encode_doc_split(records_path, splits_path, enc)
            else:
                _encode_tail_split(records_path, enc, p1.total_bytes, tail)
            enc.close()
        finally:
            enc.abort()
            for w in writers.values():
                w.close()
    records_path.unlink()
    if splits_path.exists():
        splits_path.unlink()
    for name in names:
        if enc.stats[name]["documents"] == 0 or writers[name].tokens == 0:
            raise DataError(f"the {name} split came out empty ({n} {plural} of text); {advice}")

    manifest = {
        "format": MANIFEST_FORMAT,
        "lmforge_version": __version__,
        "dtype": dtype.name,
        "vocab_size": tok.vocab_size,
        "eos_id": eos,
        "eos_after": "document",  # the stream's convention: every document's tokens, then eos
        "tokenizer": {
            "file": "tokenizer.json",
            "kind": tok.kind,
            "sha256": tok.sha256(),
            "trained": loaded is None,
            "source": None if loaded is None else opts["tokenizer"],
        },
        "splits": {
            name: {
                "shards": writers[name].shards,
                "documents": enc.stats[name]["documents"],
                "tokens": writers[name].tokens,
                "bytes": enc.stats[name]["bytes"],
            }
            for name in names
        },
        "sources": per_source,  # documents kept from each source and their cleaned UTF-8 bytes
        "removed": dict(removed),
        **({"pii": dict(sorted(p1.pii.items()))} if opts["scrub_pii"] else {}),
        # near_dedup_method only where it made a difference: a run without --near-dedup has the manifest it had.
        "options": {
            k: v
            for k, v in opts.items()
            if k != "scrub" and (k != "near_dedup_method" or opts["near_dedup"] is not None)
        },
        "seed": opts["seed"],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    (tmp / "manifest.json").write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return manifest
