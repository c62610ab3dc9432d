"""CoNLL files read line by line, with the checks every reader of them shares (the tagger's data in
tasks/ner/conll.py, `lmforge split` and `lmforge augment` through data/labelled.py): one token per line with its tag
in the last column, a blank line between sentences, `-DOCSTART-` lines between documents.

    EU NNP B-NP B-ORG
    rejects VBZ B-VP O
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import DataError

TAG = re.compile(r"O|[BIES]-\S+")  # BIO (IOB1/IOB2) and BIOES tags
DOCSTART = "-DOCSTART-"


@dataclass
class ConllSentence:
    rows: list[list[str]]  # the columns of each token line: the word first, the tag last
    line: int  # line number of the first word, for messages
    document: int  # the index of its -DOCSTART- document (0 before the first one)


class ConllReader:
    """The sentences of a CoNLL file, read lazily (a caller that needs N stops reading after them). Each line is
    checked: it has a tag, the columns of the file's first line, and (`check_tags`) a BIO/BIOES tag; a malformed
    line is a DataError that names it. `docstart` is the file's first -DOCSTART- line once it has been read."""

    def __init__(self, path: str | os.PathLike, check_tags: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{path} does not exist")
        self.check_tags = check_tags
        self.docstart: str | None = None

    def __iter__(self) -> Iterator[ConllSentence]:
        rows: list[list[str]] = []
        document, first, columns, seen = 0, 0, None, False
        try:
            with open(self.path, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    parts = line.split()
                    if not parts or parts[0] == DOCSTART:
                        if rows:
                            yield ConllSentence(rows, first, document)
                            rows, seen = [], True
                        if parts:  # a document boundary: the sentences after it are the next document
                            document += 1 if seen or self.docstart else 0
                            self.docstart = self.docstart or line.strip()
                        continue
                    self.check(parts, n, columns)
                    columns = columns or len(parts)
                    if not rows:
                        first = n
                    rows.append(parts)
        except UnicodeDecodeError:
            raise DataError(f"{self.path} is not UTF-8 text") from None
        if rows:
            yield ConllSentence(rows, first, document)

    def check(self, parts: list[str], n: int, columns: int | None) -> None:
        where = f"{self.path}:{n}"
        if len(parts) < 2:
            raise DataError(f"{where} has no tag: a CoNLL line is 'WORD ... TAG' (tag in the last column)")
        # Every line of a file has the same columns; a line with fewer has usually lost its tag.
        if columns and len(parts) != columns:
            raise DataError(f"{where} has {len(parts)} columns where the file's first line has {columns}")
        if self.check_tags and not TAG.fullmatch(parts[-1]):
            raise DataError(f"{where} has tag {parts[-1]!r}; tags are O, B-TYPE, I-TYPE (or E-/S- for BIOES)")
