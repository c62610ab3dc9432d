"""CoNLL files for named-entity recognition: one token per line with its tag in the last column, a blank line
between sentences, `-DOCSTART-` lines between documents.

    EU NNP B-NP B-ORG
    rejects VBZ B-VP O

Tags are BIO (IOB2) or BIOES. Files in the older IOB1 form (an entity may start with I-) are read as IOB2, so
that strict entity scoring sees every gold entity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import islice

from lmforge.data.conll import ConllReader
from lmforge.errors import DataError


@dataclass
class Sentence:
    words: list[str]
    tags: list[str]
    line: int  # line number of the first word, for messages


def read_conll(path: str | os.PathLike, max_sentences: int | None = None) -> list[Sentence]:
    """The sentences of a CoNLL file (data/conll.py reads and checks its lines); a malformed line is a DataError
    that names it."""
    sentences = islice(ConllReader(path, check_tags=True), max_sentences)
    out = [Sentence([r[0] for r in s.rows], to_iob2([r[-1] for r in s.rows]), s.line) for s in sentences]
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
