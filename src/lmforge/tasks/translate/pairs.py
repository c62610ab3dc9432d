"""Paired texts (source → target) for translation and summarization: TSV, CSV, JSON Lines, or two parallel files.

sources.tsv   "ein Haus\ta house"                (column 0 is the source, column 1 the target; a first line
                                                 naming both fields is a header and picks the columns)
pairs.csv     a header row naming the fields; quoted cells may span lines (DialogSum's dialogues do)
pairs.jsonl   {"src": "ein Haus", "tgt": "a house"}  (field names are options)
parallel      train.de + train.en, line i of one is the translation of line i of the other
              (read_pairs("train", source_lang="de", target_lang="en"))
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import DataError


@dataclass(frozen=True)
class Pair:
    source: str
    target: str


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} as UTF-8 text ({type(exc).__name__})") from None


def _checked(path: Path, n: int, source, target) -> Pair:
    for name, value in (("source", source), ("target", target)):
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{path}:{n} has an empty or missing {name}; remove the line or fill it in")
    return Pair(source.strip(), target.strip())


def read_pairs(
    path: str | os.PathLike,
    source_field: str = "src",
    target_field: str = "tgt",
    max_pairs: int | None = None,
    source_lang: str | None = None,
    target_lang: str | None = None,
) -> list[Pair]:
    """Pairs of a .jsonl file (by field name), a .csv file (header names or column numbers), a TSV file (columns 0
    and 1, the column numbers given as fields, or the columns a header line names), or, with both languages given,
    the parallel files PATH.SOURCE_LANG and PATH.TARGET_LANG. Blank lines are skipped; a line without a source or a
    target is a DataError naming it."""
    if source_lang or target_lang:
        if not (source_lang and target_lang):
            raise DataError("parallel files need both --source-lang and --target-lang")
        pairs = read_parallel(f"{path}.{source_lang}", f"{path}.{target_lang}")
        return pairs[:max_pairs] if max_pairs is not None else pairs
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return _read_csv(path, source_field, target_field, max_pairs)
    pairs: list[Pair] = []
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    lines = _lines(path)
    columns = (
        (int(source_field), int(target_field))
        if source_field.isdigit() and target_field.isdigit()
        else (0, 1)
    )
    first = next((n for n, line in enumerate(lines) if line.strip()), None)
    if not jsonl and first is not None:
        header = lines[first].split("\t")
        if source_field in header and target_field in header:
            columns = (header.index(source_field), header.index(target_field))
            lines = [""] * (first + 1) + lines[first + 1 :]  # keep the line numbers of the rest
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if jsonl:
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path}:{n} is not a JSON object") from None
            if not isinstance(item, dict):
                raise DataError(f"{path}:{n} is not a JSON object with {source_field!r} and {target_field!r}")
            pairs.append(_checked(path, n, item.get(source_field), item.get(target_field)))
        else:
            cells = line.split("\t")
            if len(cells) <= max(columns):
                raise DataError(
                    f"{path}:{n} has {len(cells)} tab-separated column(s); a pair needs a source and a target"
                )
            pairs.append(_checked(path, n, cells[columns[0]], cells[columns[1]]))
        if max_pairs is not None and len(pairs) >= max_pairs:
            break
    if not pairs:
        raise DataError(f"{path} has no source-target pairs")
    return pairs


def _read_csv(path: Path, source_field: str, target_field: str, max_pairs: int | None) -> list[Pair]:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path} has no source-target pairs")
            columns = []
            for kind, field in (("source", source_field), ("target", target_field)):
                if field.isdigit():
                    columns.append(int(field))
                elif field in header:
                    columns.append(header.index(field))
                else:
                    raise DataError(
                        f"{path}: no {kind} column {field!r} in the header ({', '.join(header)}); "
                        f"name it with --{kind}-field"
                    )
            pairs = []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) <= max(columns):
                    raise DataError(
                        f"{path}:{reader.line_num} has {len(row)} column(s); the header has {len(header)}"
                    )
                pairs.append(_checked(path, reader.line_num, row[columns[0]], row[columns[1]]))
                if max_pairs is not None and len(pairs) >= max_pairs:
                    break
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} as UTF-8 CSV ({type(exc).__name__}: {exc})") from None
    if not pairs:
        raise DataError(f"{path} has no source-target pairs")
    return pairs


def read_parallel(source_path: str | os.PathLike, target_path: str | os.PathLike) -> list[Pair]:
    """Pairs of two line-aligned files; their line counts must agree and no line may be empty."""
    source_path, target_path = Path(source_path), Path(target_path)
    sources, targets = _lines(source_path), _lines(target_path)
    # A final empty line is a trailing newline's artefact, not a missing sentence.
    while sources and not sources[-1].strip() and len(sources) > len(targets):
        sources.pop()
    while targets and not targets[-1].strip() and len(targets) > len(sources):
        targets.pop()
    if len(sources) != len(targets):
        shorter = source_path if len(sources) < len(targets) else target_path
        raise DataError(
            f"{source_path} has {len(sources)} lines but {target_path} has {len(targets)}; "
            f"{shorter} ends at line {min(len(sources), len(targets))}"
        )
    if not sources:
        raise DataError(f"{source_path} has no lines")
    pairs = []
    for n, (s, t) in enumerate(zip(sources, targets), 1):
        if not s.strip() or not t.strip():
            empty = source_path if not s.strip() else target_path
            raise DataError(f"{empty}:{n} is empty; parallel files need a sentence on every line")
        pairs.append(Pair(s.strip(), t.strip()))
    return pairs
