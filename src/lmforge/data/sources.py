"""Reading corpora: expanding inputs (files, folders, globs, stdin) and streaming their documents.

Every reader yields *pieces*: `(text, last)` pairs, where a document is the run of pieces up to and
including the one with `last=True`. Small documents are a single piece; a very large document (a
500 MB .txt read with doc_split="file") comes as pieces of about `PIECE_CHARS` characters cut at line
boundaries, so memory never depends on the size of a file.
"""

from __future__ import annotations

import codecs
import csv
import glob
import itertools
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import DataError, LmforgeError
from lmforge.extras import require

# A document larger than this many characters is streamed as several pieces (2-8 MB of UTF-8).
PIECE_CHARS = 1 << 21
# Bytes read from a file at a time.
READ_BYTES = 1 << 20

STRUCTURED = {
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
# Files with these suffixes are skipped when walking a folder (they are never text). Named explicitly on
# the command line they are read anyway, and fail with a clear "binary file" error.
BINARY_SUFFIXES = {
    ".bin",
    ".npy",
    ".npz",
    ".pt",
    ".pth",
    ".safetensors",
    ".ckpt",
    ".onnx",
    ".pkl",
    ".pickle",
    ".arrow",
    ".png",
    ".jpg",
    ".jpeg",
    ".gif",
    ".bmp",
    ".ico",
    ".webp",
    ".tif",
    ".tiff",
    ".psd",
    ".pdf",
    ".doc",
    ".docx",
    ".xls",
    ".xlsx",
    ".ppt",
    ".pptx",
    ".odt",
    ".epub",
    ".zip",
    ".gz",
    ".tgz",
    ".bz2",
    ".xz",
    ".zst",
    ".lz4",
    ".tar",
    ".7z",
    ".rar",
    ".exe",
    ".dll",
    ".so",
    ".dylib",
    ".o",
    ".a",
    ".pyc",
    ".pyo",
    ".class",
    ".jar",
    ".wasm",
    ".mp3",
    ".mp4",
    ".wav",
    ".flac",
    ".ogg",
    ".m4a",
    ".avi",
    ".mov",
    ".mkv",
    ".webm",
    ".woff",
    ".woff2",
    ".ttf",
    ".otf",
    ".eot",
    ".db",
    ".sqlite",
    ".sqlite3",
}
_WIDE_ENCODINGS = ("utf-16", "utf-32")

# A run of one or more blank (whitespace-only) lines: the separator of doc_split="paragraph".
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n(?:[^\S\n]*\n)*")
_NON_SPACE = re.compile(r"\S")


@dataclass(frozen=True)
class Source:
    """One input: a file (`path`), or standard input (`path == "-"`)."""

    path: str
    kind: str  # "text" | "html" | "json" | "csv" | "parquet" | "stdin"
    size: int | None  # bytes on disk, None for stdin
    val: bool = False  # given with --val: every document of it goes to the validation split

    @property
    def tsv(self) -> bool:
        return self.path.lower().endswith(".tsv")


def check_encoding(encoding: str) -> str:
    """The canonical codec name of `encoding`, or a DataError for an unknown one."""
    try:
        return codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise DataError(
            f"unknown encoding {encoding!r}; use a Python codec name such as utf-8, latin-1, gbk or utf-16"
        ) from None


def _kind_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in STRUCTURED:
        return STRUCTURED[suffix]
    return "html" if suffix in HTML_SUFFIXES else "text"


def _file_source(path: Path) -> Source:
    return Source(str(path), _kind_of(path), path.stat().st_size)


def _walk_folder(folder: Path, exclude: set[Path]) -> list[Source]:
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        # Hidden folders (.git, .venv...) and lmforge's own output folders are never corpus.
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and (root_path / d).resolve() not in exclude
        )
        for name in files:
            if name.startswith(".") or Path(name).suffix.lower() in BINARY_SUFFIXES:
                continue
            p = root_path / name
            if p.is_file():
                found.append(p)
    found.sort(key=lambda p: p.relative_to(folder).as_posix())
    if not found:
        raise DataError(f"folder {folder} has no text files to read; put .txt/.md/.jsonl/... files in it")
    return [_file_source(p) for p in found]


def expand_inputs(inputs: Iterable[str], exclude: Iterable[str | os.PathLike] = ()) -> list[Source]:
    """Files to read, in a deterministic order: folders are walked recursively and globs expanded, both sorted.

    `exclude` lists folders never to descend into (the output folder and its temporary siblings).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    excluded = {Path(p).resolve() for p in exclude}
    sources: list[Source] = []
    for item in inputs:
        item = os.fspath(item)
        if item == "-":
            sources.append(Source("-", "stdin", None))
            continue
        path = Path(item)
        if path.is_dir():
            sources.extend(_walk_folder(path, excluded))
        elif path.is_file():
            sources.append(_file_source(path))
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise DataError(
                    f"no files match {item!r}; check the pattern (quote it so the shell does not expand it)"
                )
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    if mp.resolve() not in excluded:
                        sources.extend(_walk_folder(mp, excluded))
                elif mp.is_file():
                    sources.append(_file_source(mp))
        else:
            raise DataError(f"input {item!r} not found; give existing files, folders, globs or - for stdin")
    if not inputs:
        raise DataError("no inputs given; name at least one file, folder, glob or - for stdin")
    # The same file named twice (say by a folder and a glob) is read once.
    seen: set[str] = set()
    unique = []
    for s in sources:
        key = s.path if s.kind == "stdin" else str(Path(s.path).resolve())
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique


# ---- plain text -------------------------------------------------------------------------------------
def _decoded_chunks(raw: Iterator[bytes], name: str, encoding: str) -> Iterator[str]:
    """Decode a byte stream incrementally; NUL bytes mean a binary file, bad bytes a wrong encoding."""
    canonical = check_encoding(encoding)
    wide = canonical.startswith(_WIDE_ENCODINGS)
    # A UTF-8 byte-order mark is not text: drop it at the start of the file.
    decoder = codecs.getincrementaldecoder("utf-8-sig" if canonical == "utf-8" else canonical)(
        errors="strict"
    )
    offset = 0

    def binary_error() -> DataError:
        return DataError(
            f"{name} looks like a binary file (it contains NUL bytes); remove it from the inputs or pass only text files"
        )

    def decode(data: bytes, final: bool) -> str:
        try:
            return decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            where = max(offset + exc.start, 0)
            raise DataError(
                f"{name} is not valid {encoding} (undecodable bytes near byte {where}); "
                f"pass its real encoding, for example --encoding latin-1 or --encoding gbk"
            ) from None

    for data in raw:
        if not wide and b"\x00" in data:
            raise binary_error()
        text = decode(data, False)
        offset += len(data)
        if wide and "\x00" in text:
            raise binary_error()
        if text:
            yield text
    tail = decode(b"", True)
    if tail:
        yield tail


def _raw_file(path: str) -> Iterator[bytes]:
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror}); check the file and its permissions") from None
    with fh:
        while data := fh.read(READ_BYTES):
            yield data


def _raw_stdin() -> Iterator[bytes]:
    stream = sys.stdin
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        while data := buffer.read(READ_BYTES):
            yield data
    else:  # a text stream without a binary buffer (e.g. io.StringIO in tests)
        while text := stream.read(READ_BYTES):
            yield text.encode("utf-8")


def _cut_point(buf: str, limit: int) -> int:
    """Where to cut an over-long piece: after the last newline before `limit`, else at whitespace, else at `limit`."""
    cut = buf.rfind("\n", 0, limit) + 1
    if cut == 0:
        ws = max(buf.rfind(" ", 0, limit), buf.rfind("\t", 0, limit))
        cut = ws if ws > 0 else limit
        if buf[cut - 1] == "\r":  # never separate \r from \n
            cut -= 1
    return max(cut, 1)


def split_text_stream(
    chunks: Iterable[str], doc_split: str, piece_chars: int = PIECE_CHARS
) -> Iterator[tuple[str, bool]]:
    """Turn decoded text chunks into document pieces `(text, last)`.

    doc_split: "file" (everything is one document), "paragraph" (blank-line separated) or "line". In the
    last two modes whitespace-only segments are separators, not documents.
    """
    if doc_split not in ("file", "paragraph", "line"):
        raise ValueError(f"unknown doc_split {doc_split!r}")
    buf = ""
    in_doc = False  # whether pieces of the current document have been yielded already

    def overflow() -> Iterator[tuple[str, bool]]:
        # Yield leading pieces of an unfinished document that grew past piece_chars. With paragraphs, never
        # cut into the trailing whitespace: it may be the start of a blank-line separator.
        nonlocal buf, in_doc
        while len(buf) > piece_chars:
            limit = piece_chars
            if doc_split == "paragraph":
                limit = min(limit, len(buf.rstrip()))
                if limit <= 0:
                    break
            cut = _cut_point(buf, limit)
            yield buf[:cut], False
            buf = buf[cut:]
            in_doc = True

    for chunk in chunks:
        buf += chunk
        if doc_split == "file":
            yield from overflow()
            continue
        if doc_split == "paragraph":
            start = 0
            for m in _PARAGRAPH_BREAK.finditer(buf):
                if _NON_SPACE.search(buf, m.end()) is None:  # the blank run may go on in the next chunk
                    break
                yield from _segment(buf[start : m.start()], in_doc)
                in_doc = False
                start = m.end()
            buf = buf[start:]
        else:  # line
            lines = buf.split("\n")
            buf = lines.pop()
            for line in lines:
                yield from _segment(line, in_doc)
                in_doc = False
        yield from overflow()
    if doc_split == "file":
        yield buf, True
    elif doc_split == "paragraph":
        parts = _PARAGRAPH_BREAK.split(buf)
        for part in parts:
            yield from _segment(part, in_doc)
            in_doc = False
    else:
        yield from _segment(buf, in_doc)


def _segment(text: str, in_doc: bool) -> Iterator[tuple[str, bool]]:
    # A whitespace-only segment is a separator, unless it ends a document already begun.
    if in_doc or text.strip():
        yield text, True


def iter_text_pieces(
    source: Source, doc_split: str = "file", encoding: str = "utf-8", piece_chars: int = PIECE_CHARS
) -> Iterator[tuple[str, bool]]:
    raw = _raw_stdin() if source.kind == "stdin" else _raw_file(source.path)
    name = "standard input" if source.kind == "stdin" else source.path
    return split_text_stream(_decoded_chunks(raw, name, encoding), doc_split, piece_chars)


# ---- structured: JSON lines / JSON arrays and CSV/TSV (standard library), parquet (pyarrow) --------------
_JSON_BLANK = re.compile(r"[ \t\n\r]*")


def _json_values(fh) -> Iterator[object]:
    """The top-level values of a JSON-lines file, or the elements of a file that is one JSON array, in order.

    Text is read a block at a time and each value decoded as soon as it is complete, so memory holds one
    record and one block, never the file. A value cut by the end of a block is decoded again once the next
    block is read (a JSON string cannot hold a raw newline, so an error followed by a newline is real).
    """
    decode = json.JSONDecoder().raw_decode
    buf, pos, eof, line = "", 0, False, 1
    state = "start"  # start -> values (JSON lines) | element / separator (inside [ ... ]) -> closed

    def read(size: int) -> None:
        nonlocal buf, pos, eof, line
        line += buf.count("\n", 0, pos)
        buf, pos = buf[pos:], 0
        while not eof and len(buf) < size:
            chunk = fh.read(READ_BYTES)
            eof = not chunk
            buf += chunk

    def error(msg: str, at: int) -> ValueError:
        return ValueError(f"{msg.removesuffix(' at')} at line {line + buf.count(chr(10), 0, at)}")

    while True:
        pos = _JSON_BLANK.match(buf, pos).end()
        if pos == len(buf):
            if eof:
                break
            read(READ_BYTES)
            continue
        ch = buf[pos]
        if state == "start" and ch == "[":
            state, pos = "element", pos + 1
            continue
        if state == "closed":
            raise error("extra data after the closing ]", pos)
        if state in ("element", "separator") and ch == "]":
            state, pos = "closed", pos + 1
            continue
        if state == "separator":
            if ch != ",":
                raise error("expecting ',' or ']' between the elements of the array", pos)
            state, pos = "element", pos + 1
            continue
        try:
            value, end = decode(buf, pos)
        except json.JSONDecodeError as exc:
            if eof or buf.find("\n", exc.pos) != -1:
                raise error(exc.msg, exc.pos) from None
            read(2 * (len(buf) - pos) + READ_BYTES)
            continue
        if end == len(buf) and not eof:  # a number or literal may go on in the next block
            read(len(buf) - pos + READ_BYTES)
            continue
        pos = end
        state = "separator" if state == "element" else "values"
        yield value
    if state in ("element", "separator"):
        raise error("the array has no closing ]", pos)


def _json_records(fh) -> Iterator[dict]:
    for n, value in enumerate(_json_values(fh), 1):
        if isinstance(value, str):  # an array of strings: each one is a record's "text", as in datasets
            value = {"text": value}
        if not isinstance(value, dict):
            raise ValueError(f"record {n} is a JSON {type(value).__name__}, not an object")
        yield value


def _csv_columns(fh, tsv: bool) -> tuple[list[str], Iterator[list[str]]]:
    """The header of a CSV/TSV file and an iterator over its other non-blank rows."""
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # a document may be longer than 128 KB
    reader = csv.reader(fh, delimiter="\t" if tsv else ",")
    header = next((row for row in reader if row), [])

    def rows() -> Iterator[list[str]]:
        for row in reader:
            if not row:
                continue
            if len(row) > len(header):
                raise ValueError(f"line {reader.line_num} has {len(row)} fields, the header {len(header)}")
            yield row

    return header, rows()


def _numeric_column(values: list) -> str | None:
    """The kind of number ("int" or "float") when every non-empty value of a CSV column's first batch is one."""
    kind = None
    for v in values:
        if not v:
            continue
        try:
            int(v)
            kind = kind or "int"
        except ValueError:
            try:
                float(v)
            except ValueError:
                return None
            kind = "float"
    return kind


def _missing_field(source: Source, text_field: str, columns) -> DataError:
    names = ", ".join(sorted(columns)) or "none"
    return DataError(
        f"{source.path} has no field {text_field!r} (its columns: {names}); pass the right one with --text-field"
    )


def _field_values(source: Source, text_field: str, encoding: str, batch_size: int) -> Iterator[object]:
    """The raw values of `text_field`, record by record (None where a record lacks it)."""
    if source.kind == "parquet":
        pq = require("pyarrow.parquet", extra="parquet", feature="reading .parquet files")
        pf = pq.ParquetFile(source.path)
        try:
            if text_field not in pf.schema_arrow.names:
                raise _missing_field(source, text_field, pf.schema_arrow.names)
            for batch in pf.iter_batches(batch_size=batch_size, columns=[text_field]):
                yield from batch.column(0).to_pylist()
        finally:
            pf.close()
        return
    # utf-8-sig: a byte-order mark is not text. newline="": the csv module sees \r\n inside quoted fields.
    codec = "utf-8-sig" if check_encoding(encoding) == "utf-8" else encoding
    with open(source.path, encoding=codec, newline="") as fh:
        if source.kind == "csv":
            header, rows = _csv_columns(fh, source.tsv)
            if not header:
                return
            if text_field not in header:
                raise _missing_field(source, text_field, header)
            col = header.index(text_field)
            values = (row[col] if col < len(row) else None for row in rows)
            first = list(itertools.islice(values, batch_size))
            kind = _numeric_column(first)
            if kind:  # a column of numbers is not the text (pandas, behind datasets, read it as numbers)
                raise DataError(
                    f"field {text_field!r} of {source.path} holds {kind} values, not text; "
                    f"pass a text column with --text-field"
                )
            yield from itertools.chain(first, values)
        else:
            # Like datasets' first batch: the field must be in one of the first batch_size records.
            records = _json_records(fh)
            first = list(itertools.islice(records, batch_size))
            if first and not any(text_field in r for r in first):
                raise _missing_field(source, text_field, set().union(*first))
            for record in itertools.chain(first, records):
                yield record.get(text_field)


def iter_records(
    source: Source, text_field: str = "text", encoding: str = "utf-8", batch_size: int = 1000
) -> Iterator[str]:
    """The `text_field` of each record of a .jsonl/.json/.csv/.tsv/.parquet file, streamed in file order.

    A missing or null value is an empty document; a value that is not text is an error. CSV cells are always
    text (a column of numbers is read as its digits).
    """
    what = {"json": "JSON", "csv": "CSV", "parquet": "Parquet"}[source.kind]
    try:
        for value in _field_values(source, text_field, encoding, batch_size):
            if value is None:
                yield ""
            elif isinstance(value, str):
                yield value
            else:
                raise DataError(
                    f"field {text_field!r} of {source.path} holds {type(value).__name__} values, not text; "
                    f"pass a text column with --text-field"
                )
    except LmforgeError:  # DataError, or MissingExtraError for parquet without pyarrow
        raise
    except UnicodeDecodeError:
        raise DataError(
            f"{source.path} is not valid {encoding}; pass its real encoding, for example --encoding latin-1"
        ) from None
    except Exception as exc:  # json, csv and pyarrow raise many kinds of errors for malformed files
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise DataError(
            f"cannot read {source.path} as {what} ({detail}); check that the file is valid {what}"
        ) from None


def iter_pieces(
    source: Source,
    text_field: str = "text",
    doc_split: str = "file",
    encoding: str = "utf-8",
    piece_chars: int = PIECE_CHARS,
) -> Iterator[tuple[str, bool]]:
    """Document pieces `(text, last)` of one source, whatever its kind."""
    if source.kind in ("json", "csv", "parquet"):
        for text in iter_records(source, text_field, encoding):
            yield text, True
    else:
        yield from iter_text_pieces(source, doc_split, encoding, piece_chars)
