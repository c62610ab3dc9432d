"""The ARPA back-off n-gram format, the text format that KenLM and SRILM read and write.

    # optional comment lines (KenLM skips lines that start with '#'; SRILM skips everything before \\data\\)
    \\data\\
    ngram 1=3
    ngram 2=2

    \\1-grams:
    -0.5228787\t</s>
    -99\t<s>\t-0.30103
    -0.1760913\ta\t-0.1249387

    \\2-grams:
    -0.30103\t<s> a
    -0.1760913\ta </s>

    \\end\\

Each entry is a log10 probability, the n-gram's words and, below the highest order, an optional log10 backoff
weight (absent means 0). This module only reads and writes the text; `lmforge.models.ngram` maps words to ids.
Every problem in a file raises `DataError` naming the file, the line and what is wrong.
"""

from __future__ import annotations

import gc
import os
import re
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from pathlib import Path

import numpy as np

from lmforge.errors import DataError

META_PREFIX = "# lmforge-ngram"  # the comment line where lmforge records the ids of the special tokens
_COUNT_LINE = re.compile(r"ngram\s+(\d+)\s*=\s*(\d+)")


@dataclass
class ArpaOrder:
    """The entries of one `\\k-grams:` section, in file order."""

    ids: np.ndarray  # (n, k) int64: each word as its row in the 1-grams section
    logprob10: np.ndarray  # (n,)
    backoff10: np.ndarray  # (n,), 0 where the file gives none
    lines: np.ndarray  # (n,) line number of each entry, for error messages


def format_log10(values: np.ndarray) -> list[str]:
    """Seven decimals (KenLM prints about six significant digits); -inf as -99, ARPA's 'never'."""
    return ["-99" if v == -np.inf else f"{v:.7f}" for v in np.asarray(values, dtype=np.float64).tolist()]


def write_arpa(
    path: str | os.PathLike,
    orders: list[tuple[list[str], np.ndarray, np.ndarray | None]],
    meta: dict[str, object] | None = None,
) -> None:
    """Write `orders[k - 1] = (n-grams as space-joined words, log10 probs, log10 backoffs or None)` as ARPA.

    Backoffs equal to 0 are left out, as ARPA allows; the highest order never has any.
    """
    with open(path, "w", encoding="utf-8") as f:
        if meta:
            f.write(META_PREFIX + " " + " ".join(f"{k}={v}" for k, v in meta.items()) + "\n")
        f.write("\n\\data\\\n")
        for k, (grams, _, _) in enumerate(orders, 1):
            f.write(f"ngram {k}={len(grams)}\n")
        for k, (grams, logprob10, backoff10) in enumerate(orders, 1):
            f.write(f"\n\\{k}-grams:\n")
            probs = format_log10(logprob10)
            if backoff10 is None:
                f.writelines(f"{p}\t{g}\n" for p, g in zip(probs, grams))
            else:
                backs = format_log10(backoff10)
                nonzero = (np.asarray(backoff10) != 0).tolist()
                f.writelines(
                    f"{p}\t{g}\t{b}\n" if nz else f"{p}\t{g}\n"
                    for p, g, b, nz in zip(probs, grams, backs, nonzero)
                )
        f.write("\n\\end\\\n")


def read_arpa(path: str | os.PathLike) -> tuple[dict[str, str], list[str], list[ArpaOrder]]:
    """The `# lmforge-ngram key=value ...` comment (empty if absent), the words of the 1-grams section in file
    order, and the entries of every order (words as rows of that list)."""
    name = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read the ARPA file {name}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise DataError(f"{name} is not an ARPA file: it is not UTF-8 text") from None
    # Millions of small lists and strings: the cyclic garbage collector would rescan them all again and again.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _Reader(name, text.split("\n")).read()
    finally:
        if collecting:
            gc.enable()


class _NotSimple(Exception):
    """A block of entries that the fast path does not handle; the line-by-line path reads it (or names the error)."""


class _Reader:
    BLOCK = 1 << 16  # entries split at once on the fast path (bounds the memory of the split lists)

    def __init__(self, name: str, lines: list[str]):
        self.name, self.lines, self.pos = name, lines, 0  # pos: index of the next line (line number pos + 1)

    def fail(self, index: int, what: str) -> DataError:
        return DataError(f"{self.name}, line {index + 1}: {what}")

    def next_nonblank(self) -> tuple[int, str] | None:
        while self.pos < len(self.lines):
            self.pos += 1
            line = self.lines[self.pos - 1].strip()
            if line:
                return self.pos - 1, line
        return None

    def read(self) -> tuple[dict[str, str], list[str], list[ArpaOrder]]:
        meta = self.preamble()
        counts = self.header()
        words: list[str] = []
        index: dict[str, int] = {}
        orders = []
        for k, expected in enumerate(counts, 1):
            title = f"\\{k}-grams:"
            item = self.next_nonblank()
            if item is None:
                raise DataError(f"{self.name} is truncated: it ends before the {title} section")
            if item[1] != title:
                if k > 1 and not item[1].startswith("\\"):
                    raise self.fail(
                        item[0],
                        f"\\{k - 1}-grams: has more entries than the {counts[k - 2]} that the header announces",
                    )
                raise self.fail(item[0], f"expected the section title {title!r}, found {item[1][:60]!r}")
            first = self.pos
            try:
                order = self.fast_section(k, expected, len(counts), index, words)
            except _NotSimple:
                self.pos = first
                if k == 1:
                    words.clear()
                order = self.slow_section(k, expected, len(counts), index, words)
            if k == 1:
                index.update((w, i) for i, w in enumerate(words))
                if len(index) != len(words):
                    seen: set[str] = set()
                    dup = next(i for i, w in enumerate(words) if w in seen or seen.add(w))
                    raise self.fail(int(order.lines[dup]) - 1, f"the 1-gram {words[dup]!r} is listed twice")
            orders.append(order)
        item = self.next_nonblank()
        if item is None:
            raise DataError(f"{self.name} is truncated: it ends without the \\end\\ line")
        if item[1] != "\\end\\":
            if item[1].startswith("\\"):
                raise self.fail(
                    item[0], f"expected \\end\\ after the {len(counts)}-grams, found {item[1][:60]!r}"
                )
            raise self.fail(
                item[0],
                f"\\{len(counts)}-grams: has more entries than the {counts[-1]} that the header announces",
            )
        return meta, words, orders

    def preamble(self) -> dict[str, str]:
        meta: dict[str, str] = {}
        for index, raw in enumerate(self.lines):
            line = raw.strip()
            if line == "\\data\\":
                self.pos = index + 1
                return meta
            if line.startswith(META_PREFIX):
                for item in line[len(META_PREFIX) :].split():
                    key, sep, value = item.partition("=")
                    if not sep:
                        raise self.fail(
                            index, f"the {META_PREFIX!r} comment has {item!r} where key=value was expected"
                        )
                    meta[key] = value
        raise DataError(f"{self.name} is not an ARPA file: it has no \\data\\ line")

    def header(self) -> list[int]:
        counts: list[int] = []
        while self.pos < len(self.lines):
            index, line = self.pos, self.lines[self.pos].strip()
            self.pos += 1
            if not line:
                if counts:
                    return counts
                continue
            m = _COUNT_LINE.fullmatch(line)
            if m is None:
                raise self.fail(
                    index,
                    f"expected a count line 'ngram N=COUNT' in the \\data\\ header, found {line[:60]!r}",
                )
            if int(m.group(1)) != len(counts) + 1:
                raise self.fail(
                    index,
                    f"expected the count of {len(counts) + 1}-grams, found {line!r} (orders must run 1, 2, ...)",
                )
            counts.append(int(m.group(2)))
        if counts:
            raise DataError(f"{self.name} is truncated: it ends after the \\data\\ header")
        raise DataError(f"{self.name} has an empty \\data\\ header (no 'ngram N=COUNT' lines)")

    def fast_section(
        self, k: int, expected: int, top: int, index: dict[str, int], words: list[str]
    ) -> ArpaOrder:
        """The usual case, vectorised where numpy can: `expected` consecutive well-formed lines."""
        block = self.lines[self.pos : self.pos + expected]
        if len(block) < expected or not all(line and line[0] not in "\\ \t\r" for line in block):
            raise _NotSimple
        ids, probs, backoffs = [], [], []
        words_of = itemgetter(*range(1, k + 1))
        for at in range(0, expected, self.BLOCK):
            parts = list(map(str.split, block[at : at + self.BLOCK]))
            sizes = set(map(len, parts))
            if not sizes <= ({k + 1, k + 2} if k < top else {k + 1}):
                raise _NotSimple
            try:
                prob = np.fromiter(map(float, map(itemgetter(0), parts)), dtype=np.float64, count=len(parts))
                if k + 2 in sizes:
                    backoff = np.array([float(p[k + 1]) if len(p) == k + 2 else 0.0 for p in parts])
                else:
                    backoff = np.zeros(prob.size)
                if k == 1:
                    words.extend(p[1] for p in parts)
                else:
                    row_of = map(index.__getitem__, chain.from_iterable(map(words_of, parts)))
                    ids.append(np.fromiter(row_of, dtype=np.int64, count=len(parts) * k))
            except (ValueError, KeyError):
                raise _NotSimple from None
            if not (np.all(prob <= 0.0) and np.all(np.isfinite(backoff))):
                raise _NotSimple
            probs.append(prob)
            backoffs.append(backoff)
        first = self.pos
        self.pos += expected
        return ArpaOrder(
            ids=np.arange(expected, dtype=np.int64).reshape(-1, 1) if k == 1 else _concat(ids).reshape(-1, k),
            logprob10=_concat(probs, np.float64),
            backoff10=_concat(backoffs, np.float64),
            lines=np.arange(first + 1, first + expected + 1, dtype=np.int64),
        )

    def slow_section(
        self, k: int, expected: int, top: int, index: dict[str, int], words: list[str]
    ) -> ArpaOrder:
        """Line by line: allows blank lines between entries and names the first problem precisely."""
        title = f"\\{k}-grams:"
        ids: list[int] = []
        probs: list[float] = []
        backoffs: list[float] = []
        lines: list[int] = []
        while len(lines) < expected:
            item = self.next_nonblank()
            if item is None:
                raise DataError(
                    f"{self.name} is truncated: it ends after {len(lines)} of the {expected} entries that the header "
                    f"announces for {title}"
                )
            no, line = item
            if line.startswith("\\"):
                raise self.fail(
                    no,
                    f"{title} has {len(lines)} entries but the header announces {expected} "
                    f"(the file is truncated or its header is wrong)",
                )
            fields = line.split()
            if len(fields) not in (k + 1, k + 2):
                raise self.fail(
                    no,
                    f"a {k}-gram entry needs a log10 probability, {k} word(s) and an optional backoff, "
                    f"found {line[:60]!r}",
                )
            if len(fields) == k + 2 and k == top:
                raise self.fail(
                    no,
                    f"{k}-grams are the highest order and cannot have a backoff weight, found {line[:60]!r}",
                )
            for field in fields[:1] + fields[k + 1 :]:
                try:
                    float(field)
                except ValueError:
                    raise self.fail(
                        no, f"{field!r} is not a number (a log10 probability or backoff of a {k}-gram)"
                    ) from None
            prob, backoff = float(fields[0]), float(fields[k + 1]) if len(fields) == k + 2 else 0.0
            if not prob <= 0.0:
                raise self.fail(no, f"{fields[0]} is not a log10 probability (it must be a number <= 0)")
            if not np.isfinite(backoff):
                raise self.fail(
                    no, f"{fields[k + 1]} is not a valid log10 backoff weight (it must be finite)"
                )
            if k == 1:
                words.append(fields[1])
            else:
                unknown = [w for w in fields[1 : k + 1] if w not in index]
                if unknown:
                    raise self.fail(no, f"the word {unknown[0]!r} of this {k}-gram is not among the 1-grams")
                ids.extend(index[w] for w in fields[1 : k + 1])
            probs.append(prob)
            backoffs.append(backoff)
            lines.append(no + 1)
        return ArpaOrder(
            ids=np.arange(expected, dtype=np.int64).reshape(-1, 1)
            if k == 1
            else np.array(ids, dtype=np.int64).reshape(-1, k),
            logprob10=np.array(probs, dtype=np.float64),
            backoff10=np.array(backoffs, dtype=np.float64),
            lines=np.array(lines, dtype=np.int64),
        )


def _concat(parts: list[np.ndarray], dtype=np.int64) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
