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

import os
import re
from dataclasses import dataclass, field

import numpy as np

from lmforge.errors import DataError

META_PREFIX = "# lmforge-ngram"  # the comment line where lmforge records the ids of the special tokens
_COUNT_LINE = re.compile(r"ngram\s+(\d+)\s*=\s*(\d+)")


@dataclass
class ArpaOrder:
    """The entries of one `\\k-grams:` section, in file order."""

    words: list[list[str]] = field(default_factory=list)
    logprob10: list[float] = field(default_factory=list)
    backoff10: list[float] = field(default_factory=list)  # 0.0 where the file gives none
    lines: list[int] = field(default_factory=list)  # line number of each entry, for error messages


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
                bos = format_log10(backoff10)
                nonzero = (np.asarray(backoff10) != 0).tolist()
                f.writelines(
                    f"{p}\t{g}\t{b}\n" if nz else f"{p}\t{g}\n" for p, g, b, nz in zip(probs, grams, bos, nonzero)
                )
        f.write("\n\\end\\\n")


def read_arpa(path: str | os.PathLike) -> tuple[dict[str, str], list[ArpaOrder]]:
    """The `# lmforge-ngram key=value ...` comment (empty if absent) and the entries of every order."""
    name = os.fspath(path)
    try:
        fh = open(path, encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read the ARPA file {name}: {exc.strerror}") from None
    with fh:
        lines = enumerate(fh, 1)

        def fail(no: int, what: str) -> DataError:
            return DataError(f"{name}, line {no}: {what}")

        meta: dict[str, str] = {}
        for no, raw in lines:
            line = raw.strip()
            if line == "\\data\\":
                break
            if line.startswith(META_PREFIX):
                for item in line[len(META_PREFIX) :].split():
                    key, sep, value = item.partition("=")
                    if not sep:
                        raise fail(no, f"the {META_PREFIX!r} comment has {item!r} where key=value was expected")
                    meta[key] = value
        else:
            raise DataError(f"{name} is not an ARPA file: it has no \\data\\ line")

        counts: list[int] = []
        for no, raw in lines:
            line = raw.strip()
            if not line:
                if counts:
                    break
                continue
            m = _COUNT_LINE.fullmatch(line)
            if m is None:
                raise fail(no, f"expected a count line 'ngram N=COUNT' in the \\data\\ header, found {line[:60]!r}")
            if int(m.group(1)) != len(counts) + 1:
                raise fail(no, f"expected the count of {len(counts) + 1}-grams, found {line!r} (orders must run 1, 2, ...)")
            counts.append(int(m.group(2)))
        else:
            raise DataError(f"{name} is truncated: it ends inside the \\data\\ header")
        if not counts:
            raise DataError(f"{name} has an empty \\data\\ header (no 'ngram N=COUNT' lines)")

        top = len(counts)
        sections: list[ArpaOrder] = []
        last = no
        for k, expected in enumerate(counts, 1):
            title = f"\\{k}-grams:"
            for no, raw in lines:
                last = no
                line = raw.strip()
                if not line:
                    continue
                if line != title:
                    raise fail(no, f"expected the section title {title!r}, found {line[:60]!r}")
                break
            else:
                raise DataError(f"{name} is truncated: it ends before the {title} section (after line {last})")
            sec = ArpaOrder()
            while len(sec.lines) < expected:
                item = next(lines, None)
                if item is None:
                    raise DataError(
                        f"{name} is truncated: it ends after {len(sec.lines)} of the {expected} entries that the "
                        f"header announces for {title} (after line {last})"
                    )
                no, raw = item
                last = no
                line = raw.strip()
                if not line:
                    continue
                if line.startswith("\\"):
                    raise fail(
                        no,
                        f"{title} has {len(sec.lines)} entries but the header announces {expected} "
                        f"(the file is truncated or its header is wrong)",
                    )
                fields = line.split()
                if len(fields) not in (k + 1, k + 2):
                    raise fail(no, f"a {k}-gram entry needs a log10 probability, {k} word(s) and an optional backoff, found {line[:60]!r}")
                if len(fields) == k + 2 and k == top:
                    raise fail(no, f"{k}-grams are the highest order and cannot have a backoff weight, found {line[:60]!r}")
                try:
                    prob = float(fields[0])
                    backoff = float(fields[k + 1]) if len(fields) == k + 2 else 0.0
                except ValueError:
                    bad = fields[0] if not _is_float(fields[0]) else fields[k + 1]
                    raise fail(no, f"{bad!r} is not a number (a log10 probability or backoff of a {k}-gram)") from None
                if not prob <= 0.0:
                    raise fail(no, f"{fields[0]} is not a log10 probability (it must be a number <= 0)")
                if not np.isfinite(backoff):
                    raise fail(no, f"{fields[k + 1]} is not a valid log10 backoff weight (it must be finite)")
                sec.words.append(fields[1 : k + 1])
                sec.logprob10.append(prob)
                sec.backoff10.append(backoff)
                sec.lines.append(no)
            sections.append(sec)

        for no, raw in lines:
            line = raw.strip()
            if not line:
                continue
            if line == "\\end\\":
                return meta, sections
            if line.startswith("\\"):
                raise fail(no, f"expected \\end\\ after the {top}-grams, found {line[:60]!r}")
            raise fail(no, f"{title} has more entries than the {counts[-1]} that the header announces")
        raise DataError(f"{name} is truncated: it ends without the \\end\\ line (after line {last})")


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
