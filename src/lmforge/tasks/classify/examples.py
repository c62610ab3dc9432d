"""Labelled examples for text classification and NLI: CSV, TSV or JSONL files, read by column name or number.

A file with a header row is read by field names (`--text-field sentence`); a file without one (AG News's TSV) by
0-based column numbers (`--text-field 0 --label-field 1`). Multi-label examples hold their labels as a JSON list or
as one string joined by `label_sep` (e.g. "sports|politics").
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.errors import DataError

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass
class Example:
    text: str
    pair: str | None = None
    labels: list[str] = field(default_factory=list)  # one label, or several for multi-label tasks


@dataclass
class Fields:
    text: str = "text"
    pair: str | None = None
    label: str = "label"
    label_sep: str | None = (
        None  # multi-label: the separator inside one label cell (None: a JSON list or one label)
    )


def _rows(path: Path, fields: Fields):
    """(line number, row) pairs; a row is a dict by field name or a list by column number."""
    by_number = fields.text.isdigit()
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield n, json.loads(line)
                    except json.JSONDecodeError:
                        raise DataError(
                            f"{path}:{n} is not a JSON object (the file must be JSON Lines)"
                        ) from None
        return
    if suffix not in (".csv", ".tsv", ".txt"):
        raise DataError(f"{path}: unknown file type {suffix!r}; give a .csv, .tsv or .jsonl file")
    delimiter = "," if suffix == ".csv" else "\t"
    with open(path, encoding="utf-8", newline="") as fh:
        # TSV files of this field (SST-2, AG News) are not quoted: a quote character is text, not a quote.
        quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
        reader = csv.reader(fh, delimiter=delimiter, quoting=quoting)
        header = None if by_number else next(reader, None)
        for n, row in enumerate(reader, 1 if by_number else 2):
            if not row:
                continue
            yield n, row if header is None else dict(zip(header, row))


def _get(row, key: str | None, path: Path, n: int):
    if key is None:
        return None
    if isinstance(row, list):
        i = int(key)
        if i >= len(row):
            raise DataError(f"{path}:{n} has {len(row)} columns, no column {i}")
        return row[i]
    if key not in row:
        raise DataError(
            f"{path}:{n} has no field {key!r} (it has: {', '.join(map(str, row))}); use the field options"
        )
    return row[key]


def read_examples(
    path: str | os.PathLike, fields: Fields, need_labels: bool = True, max_examples: int | None = None
) -> list[Example]:
    """Examples of a labelled file; empty texts and missing labels are errors that name the line."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path} does not exist")
    out = []
    try:
        for n, row in _rows(p, fields):
            text = _get(row, fields.text, p, n)
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{p}:{n} has an empty text")
            pair = _get(row, fields.pair, p, n)
            if fields.pair is not None and (not isinstance(pair, str) or not pair.strip()):
                raise DataError(f"{p}:{n} has an empty {fields.pair!r} (the second text of the pair)")
            labels: list[str] = []
            if need_labels:
                raw = _get(row, fields.label, p, n)
                if raw is None or (isinstance(raw, str) and not raw.strip()):
                    raise DataError(f"{p}:{n} has no label")
                if isinstance(raw, list):
                    labels = [str(x) for x in raw]
                elif fields.label_sep and isinstance(raw, str):
                    labels = [x.strip() for x in raw.split(fields.label_sep) if x.strip()]
                else:
                    labels = [str(raw).strip()]
            out.append(Example(text.strip(), pair.strip() if pair else None, labels))
            if max_examples is not None and len(out) >= max_examples:
                break
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None
    if not out:
        raise DataError(f"{path} has no examples")
    return out


def label_set(examples: list[Example]) -> list[str]:
    """The labels in a stable order: numerically when they are all numbers (0, 1, 2, 10), else alphabetically."""
    names = {label for ex in examples for label in ex.labels}
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def check_labels(examples: list[Example], known: list[str], path: str | os.PathLike) -> None:
    unseen = sorted({label for ex in examples for label in ex.labels} - set(known))
    if unseen:
        raise DataError(
            f"{path} has label(s) the model was not trained on: {', '.join(unseen[:5])} (it knows {', '.join(known)})"
        )
