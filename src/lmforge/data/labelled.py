"""Labelled task files read as records and written back in their own format: what `lmforge split` and `lmforge
augment` move between files without knowing the task.

The formats and field conventions are the task readers' (tasks/classify/examples.py, data/conll.py): CSV
(quoted) and TSV (unquoted) read by header field name, or by 0-based column number for files without a header;
JSON Lines objects by key; CoNLL as sentences of `WORD ... TAG` lines, blank lines between sentences and
`-DOCSTART-` lines between documents. A record keeps every column of its row, so a split or augmented file has
the columns of the original.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.data.conll import DOCSTART, TAG, ConllReader
from lmforge.errors import DataError

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

KINDS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
CONLL_SUFFIXES = (".conll", ".conllu", ".iob", ".bio")


@dataclass
class Token:
    """One CoNLL line: the word first, the tag last, any columns between (POS, chunk) kept as they were."""

    columns: list[str]

    @property
    def word(self) -> str:
        return self.columns[0]

    @property
    def tag(self) -> str:
        return self.columns[-1]


@dataclass
class Record:
    """One example: a table row (a list by column, or a dict by field name) or a CoNLL sentence (its tokens)."""

    row: list[str] | dict | None = None
    tokens: list[Token] | None = None
    document: int = 0  # CoNLL: the index of its -DOCSTART- document
    line: int = 0  # the line it starts at, for messages


@dataclass
class LabelledFile:
    path: Path
    kind: str  # csv | tsv | jsonl | conll
    header: list[str] | None = None  # csv/tsv read by field name
    records: list[Record] = field(default_factory=list)
    docstart: str | None = None  # CoNLL: the file's -DOCSTART- line, written before each document again

    @property
    def suffix(self) -> str:
        return self.path.suffix or ".txt"


def kind_of(path: str | os.PathLike, conll: bool | None = None) -> str:
    """The format of a file by its suffix (a .txt file is a TSV unless it is CoNLL: conll=True, or None to look)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in CONLL_SUFFIXES:
        return "conll"
    if suffix == ".txt" and (conll or (conll is None and looks_conll(p))):
        return "conll"
    if suffix not in KINDS:
        raise DataError(
            f"{path}: unknown file type {suffix or '(no suffix)'!r}; give a .csv, .tsv, .jsonl or CoNLL (.txt, .conll) file"
        )
    return KINDS[suffix]


def looks_conll(path: Path) -> bool:
    """A .txt file whose first lines are `WORD ... TAG` (a -DOCSTART- line, or a tag in the last column)."""
    try:
        with open(path, encoding="utf-8") as fh:
            head = [ln for _, ln in zip(range(20), fh) if ln.strip()]
    except (OSError, UnicodeDecodeError):
        return False
    lines = [ln.split() for ln in head]
    if not lines or lines[0][0] == DOCSTART:
        return bool(lines)
    tagged = [p for p in lines if len(p) >= 2 and TAG.fullmatch(p[-1])]
    return len(tagged) == len(lines) and "\t" not in head[0]


def read_labelled(
    path: str | os.PathLike, by_number: bool = False, conll: bool | None = None
) -> LabelledFile:
    """The records of a labelled file; `by_number`: a CSV/TSV without a header row (fields are column numbers)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path} does not exist")
    kind = kind_of(p, conll)
    out = LabelledFile(p, kind)
    try:
        if kind == "conll":
            read_conll_records(out)
        elif kind == "jsonl":
            with open(p, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError:
                            raise DataError(
                                f"{p}:{n} is not a JSON object (the file must be JSON Lines)"
                            ) from None
                        if not isinstance(row, dict):
                            raise DataError(f"{p}:{n} is not a JSON object (the file must be JSON Lines)")
                        out.records.append(Record(row=row, line=n))
        else:
            with open(p, encoding="utf-8", newline="") as fh:
                reader = csv.reader(fh, **dialect(kind))
                out.header = None if by_number else next(reader, None)
                for n, row in enumerate(reader, 1 if by_number else 2):
                    if row:
                        out.records.append(Record(row=row, line=n))
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None
    if not out.records:
        raise DataError(f"{path} has no examples")
    return out


def dialect(kind: str) -> dict:
    # TSV files of this field (SST-2, AG News) are not quoted: a quote character is text, not a quote (as the
    # task reader reads them).
    if kind == "csv":
        return {"delimiter": ",", "quoting": csv.QUOTE_MINIMAL}
    return {"delimiter": "\t", "quoting": csv.QUOTE_NONE, "quotechar": None}


def read_conll_records(out: LabelledFile) -> None:
    reader = ConllReader(out.path)  # the lines' checks are the tagger's (data/conll.py), tags unchecked
    for s in reader:
        out.records.append(Record(tokens=[Token(r) for r in s.rows], document=s.document, line=s.line))
    out.docstart = reader.docstart


def field_value(lf: LabelledFile, record: Record, name: str) -> str:
    """A record's field by name (or by column number for a file without a header); DataError naming the line."""
    row = record.row
    if isinstance(row, dict):
        if name not in row:
            raise DataError(
                f"{lf.path}:{record.line} has no field {name!r} (it has: {', '.join(map(str, row))}); use the field options"
            )
        value = row[name]
        return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else str(value)
    return row[column(lf, name, record)]


def column(lf: LabelledFile, name: str, record: Record) -> int:
    """The column index of field `name` in a CSV/TSV record."""
    if lf.header is None:
        if not name.isdigit():
            raise DataError(
                f"{lf.path} is read without a header, so fields are column numbers (0, 1, ...), not {name!r}"
            )
        i = int(name)
    else:
        if name not in lf.header:
            raise DataError(
                f"{lf.path} has no field {name!r} (its header: {', '.join(lf.header)}); use the field options"
            )
        i = lf.header.index(name)
    if i >= len(record.row):
        raise DataError(f"{lf.path}:{record.line} has {len(record.row)} columns, no column {i}")
    return i


def with_field(lf: LabelledFile, record: Record, name: str, value: str) -> Record:
    """A copy of a table record with field `name` set to `value` (every other field kept)."""
    if isinstance(record.row, dict):
        return Record(row={**record.row, name: value}, line=record.line)
    row = list(record.row)
    row[column(lf, name, record)] = value
    return Record(row=row, line=record.line)


def format_records(lf: LabelledFile, records: list[Record]) -> str:
    """The text of a file of `lf`'s format (its header, its -DOCSTART- lines) holding `records`."""
    if lf.kind == "conll":
        parts, document = [], None
        for r in records:
            if lf.docstart is not None and r.document != document:
                parts.append(lf.docstart + "\n\n")
                document = r.document
            parts.append("".join(" ".join(t.columns) + "\n" for t in r.tokens) + "\n")
        return "".join(parts)
    if lf.kind == "jsonl":
        return "".join(json.dumps(r.row, ensure_ascii=False) + "\n" for r in records)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n", **dialect(lf.kind))
    if lf.header is not None:
        writer.writerow(lf.header)
    for r in records:
        writer.writerow(r.row)
    return buf.getvalue()
