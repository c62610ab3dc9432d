"""CoNLL files for named-entity recognition: one token per line with its tag in the last column, a blank line
between sentences, `-DOCSTART-` lines between documents.

    EU NNP B-NP B-ORG
    rejects VBZ B-VP O

Tags are BIO (IOB2) or BIOES. Files in the older IOB1 form (an entity may start with I-) are read as IOB2, so
that strict entity scoring sees every gold entity.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import DataError

TAG = re.compile(r"O|[BIES]-\S+")


@dataclass
class Sentence:
    words: list[str]
    tags: list[str]
    line: int  # line number of the first word, for messages


def read_conll(path: str | os.PathLike, max_sentences: int | None = None) -> list[Sentence]:
    """The sentences of a CoNLL file; a malformed line is a DataError that names it."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path} does not exist")
    out: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    first, columns = 0, None

    def close() -> None:
        nonlocal words, tags
        if words:
            out.append(Sentence(words, to_iob2(tags), first))
        words, tags = [], []

    try:
        with open(p, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                parts = line.split()
                if not parts or parts[0] == "-DOCSTART-":
                    close()
                    if max_sentences is not None and len(out) >= max_sentences:
                        break
                    continue
                if len(parts) < 2:
                    raise DataError(
                        f"{p}:{n} has no tag: a CoNLL line is 'WORD ... TAG' (tag in the last column)"
                    )
                # Every line of a file has the same columns; a line with fewer has usually lost its tag.
                columns = columns or len(parts)
                if len(parts) != columns:
                    raise DataError(
                        f"{p}:{n} has {len(parts)} columns where the file's first line has {columns}"
                    )
                if not TAG.fullmatch(parts[-1]):
                    raise DataError(
                        f"{p}:{n} has tag {parts[-1]!r}; tags are O, B-TYPE, I-TYPE (or E-/S- for BIOES)"
                    )
                if not words:
                    first = n
                words.append(parts[0])
                tags.append(parts[-1])
            else:
                close()
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None
    out = out[:max_sentences] if max_sentences is not None else out
    if not out:
        raise DataError(f"{path} has no sentences")
    return out


def to_iob2(tags: list[str]) -> list[str]:
    """IOB1 to IOB2: an I- tag that starts an entity becomes B-. IOB2 and BIOES tags come back unchanged."""
    if any(t[0] in "ES" for t in tags):
        return tags
    out = []
    for i, tag in enumerate(tags):
        if tag.startswith("I-") and (i == 0 or tags[i - 1][2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
    return out


def tag_set(sentences: list[Sentence]) -> list[str]:
    """The tags in a stable order: O first, then by entity type, then by prefix (B, I, E, S)."""
    names = {t for s in sentences for t in s.tags} | {"O"}
    return sorted(names, key=lambda t: (t != "O", t[2:], t[:1]))


def scheme_of(tags: list[str]) -> str:
    """seqeval's scheme name for a tag set: IOBES when it has E-/S- tags, else IOB2."""
    return "IOBES" if any(t[:2] in ("E-", "S-") for t in tags) else "IOB2"


def check_tags(sentences: list[Sentence], known: list[str], path: str | os.PathLike) -> None:
    unseen = sorted({t for s in sentences for t in s.tags} - set(known))
    if unseen:
        raise DataError(
            f"{path} has tag(s) the model was not trained on: {', '.join(unseen[:5])} (it knows {', '.join(known)})"
        )
