"""PII scrubbing: personal data and secrets in text replaced by typed placeholders before anyone trains on it.

    scrubber = Scrubber(ScrubOptions())
    text, counts = scrubber.scrub("mail jane.doe@example.org or call +44 20 7946 0958")
    # "mail <EMAIL> or call <PHONE>", {"email": 1, "phone": 1}

What is found (the `TYPES`, each with its placeholder):

- email `<EMAIL>`; phone `<PHONE>`: international numbers written with a leading + (7 to 15 digits, E.164),
  North-American (415) 555-0123 / 415-555-0123, and mainland-Chinese mobiles (1[3-9]x xxxx xxxx, with or without
  +86); ipv4 / ipv6 `<IP>` (every octet / group checked by `ipaddress`);
- card `<CARD>`: 13 to 19 digits (spaces or dashes allowed) with a card network's prefix and a valid Luhn digit;
- iban `<IBAN>`: a country's length and the mod-97 checksum (ISO 13616);
- id `<ID>`: a mainland-Chinese resident identity number (18 characters, a real birth date, the ISO 7064 MOD 11-2
  check character);
- ssn `<SSN>`: a US social security number written AAA-GG-SSSS (area not 000, 666 or 9xx; group and serial not
  zero);
- credentials `<CREDENTIALS>`: the user:password part of a URL (scheme://user:password@host keeps its host);
- secret `<SECRET>`: API keys with a known shape (AWS, GitHub, GitLab, Slack, Stripe, OpenAI, Google, JWTs, PEM
  private key blocks) and the value of an assignment whose name says it is secret (`api_key = "..."`,
  `password: ...`), when it is at least 8 characters long.

Text that only resembles these stays: version numbers, dates and times, prices, ISBNs (their 978/979 prefix is no
card network's), hex hashes and UUIDs (a hash is a secret only when named as one), numbers with a wrong checksum.
A number written without the separators or the + that make it a phone number (a bare 10-digit number) is not
taken for one: too many other numbers look like that.

Placeholders are one ASCII word in angle brackets, with no digits, spaces or characters the patterns match, so
scrubbing is idempotent and a tokenizer sees the same short run of tokens for every occurrence.

Why hand-written patterns and not Presidio: Presidio's AnalyzerEngine builds a spaCy NLP engine whose model
(en_core_web_lg) is downloaded at run time, which this project cannot do, and it brings spaCy for what are regular
expressions plus checksums; its recognizers also lack the Chinese mobile and resident-ID checks. Person,
organisation and location names come from an lmforge NER model instead (`names`, the `--pii-ner` option of the
CLI), which sits in the tasks layer and is handed in as a function.
"""

from __future__ import annotations

import bisect
import ipaddress
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.data.sources import check_encoding
from lmforge.errors import ConfigError, DataError
from lmforge.outputs import check_output, staged

__all__ = [
    "TYPES",
    "PLACEHOLDERS",
    "NAME_TYPES",
    "ScrubOptions",
    "Scrubber",
    "scrub_files",
    "luhn_ok",
    "iban_ok",
    "cn_id_ok",
]

PLACEHOLDERS = {
    "email": "<EMAIL>",
    "phone": "<PHONE>",
    "ipv4": "<IP>",
    "ipv6": "<IP>",
    "card": "<CARD>",
    "iban": "<IBAN>",
    "id": "<ID>",
    "ssn": "<SSN>",
    "credentials": "<CREDENTIALS>",
    "secret": "<SECRET>",
    # from an NER model (names=...)
    "person": "<PERSON>",
    "org": "<ORG>",
    "location": "<LOCATION>",
}
TYPES = ("email", "phone", "ipv4", "ipv6", "card", "iban", "id", "ssn", "credentials", "secret")
NAME_TYPES = ("person", "org", "location")

# A function that finds names in a text: (start, end, type) spans with type one of NAME_TYPES.
NameFinder = Callable[[str], Iterable[tuple[int, int, str]]]


@dataclass
class ScrubOptions:
    """What to scrub: `types` (a subset of TYPES); `names`, a NameFinder for person/org/location names, or None."""

    types: tuple[str, ...] = TYPES
    names: NameFinder | None = field(default=None, repr=False)

    def validate(self) -> None:
        unknown = [t for t in self.types if t not in TYPES]
        if unknown:
            raise ConfigError(f"unknown PII type {unknown[0]!r}; choose among {', '.join(TYPES)}")
        if not self.types and self.names is None:
            raise ConfigError("nothing to scrub: give at least one PII type")


# ---- checksums ----------------------------------------------------------------------------------------------
def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check of a card number's digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# Lengths of the IBANs of the countries that issue them (SWIFT's IBAN registry).
_IBAN_LENGTHS = dict(
    AD=24,
    AE=23,
    AL=28,
    AT=20,
    AZ=28,
    BA=20,
    BE=16,
    BG=22,
    BH=22,
    BI=27,
    BR=29,
    BY=28,
    CH=21,
    CR=22,
    CY=28,
    CZ=24,
    DE=22,
    DJ=27,
    DK=18,
    DO=28,
    EE=20,
    EG=29,
    ES=24,
    FI=18,
    FK=18,
    FO=18,
    FR=27,
    GB=22,
    GE=22,
    GI=23,
    GL=18,
    GR=27,
    GT=28,
    HR=21,
    HU=28,
    IE=22,
    IL=23,
    IQ=23,
    IS=26,
    IT=27,
    JO=30,
    KW=30,
    KZ=20,
    LB=28,
    LC=32,
    LI=21,
    LT=20,
    LU=20,
    LV=21,
    LY=25,
    MC=27,
    MD=24,
    ME=22,
    MK=19,
    MN=20,
    MR=27,
    MT=31,
    MU=30,
    NI=28,
    NL=18,
    NO=15,
    OM=23,
    PK=24,
    PL=28,
    PS=29,
    PT=25,
    QA=29,
    RO=24,
    RS=22,
    RU=33,
    SA=24,
    SC=31,
    SD=18,
    SE=24,
    SI=19,
    SK=24,
    SM=27,
    SO=23,
    ST=25,
    SV=28,
    TL=23,
    TN=24,
    TR=26,
    UA=29,
    VA=22,
    VG=24,
    XK=20,
    YE=30,
)


def iban_ok(iban: str) -> bool:
    """An IBAN (spaces removed) of its country's length whose mod-97 checksum is 1."""
    iban = iban.upper()
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isalnum():
        return False
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


_CN_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_CHECK = "10X98765432"


def cn_id_ok(number: str) -> bool:
    """A mainland-Chinese resident identity number: a province code, a real birth date, the MOD 11-2 check."""
    if len(number) != 18 or not number[:17].isdigit() or number[0] not in "1234568":
        return False
    year, month, day = int(number[6:10]), int(number[10:12]), int(number[12:14])
    if not (1900 <= year <= 2100 and 1 <= month <= 12 and 1 <= day <= 31):
        return False
    check = _CN_CHECK[sum(int(d) * w for d, w in zip(number, _CN_WEIGHTS)) % 11]
    return number[17].upper() == check


def _card_ok(text: str) -> bool:
    if (" " in text) and ("-" in text):
        return False  # one kind of separator
    digits = text.replace(" ", "").replace("-", "")
    if not 13 <= len(digits) <= 19 or not luhn_ok(digits):
        return False
    # A card network's prefix (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro, Mir):
    # ISBN-13 (978/979) and most other long numbers that pass Luhn by chance have none.
    two, four = int(digits[:2]), int(digits[:4])
    return (
        digits[0] == "4"
        or 51 <= two <= 55
        or 2221 <= four <= 2720
        or two in (34, 37, 36, 38, 62, 65, 50, 56, 57, 58, 63, 67)
        or 300 <= int(digits[:3]) <= 305
        or four == 6011
        or 644 <= int(digits[:3]) <= 649
        or 3528 <= four <= 3589
        or 2200 <= four <= 2204
    )


def _ssn_ok(text: str) -> bool:
    area, group, serial = text.split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _ipv4_ok(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _ipv6_ok(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        return False
    # `::`, `::1` and slices like `[::2]` are valid addresses but say nothing about anyone: three groups at least
    return sum(1 for g in re.split(r"[:.]", text.split("%", 1)[0]) if g) >= 3


def _phone_ok(text: str) -> bool:
    digits = sum(ch.isdigit() for ch in text)
    return 7 <= digits <= 15 if text.startswith("+") else True


def _iban_match(text: str) -> bool:
    return iban_ok(text.replace(" ", ""))


_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")


def _local_part_start(text: str, at: int) -> int | None:
    """Where the local part of the e-mail address whose @ is at `at` starts (None: no local part)."""
    start = at
    while start > 0 and at - start < 64 and text[start - 1] in _LOCAL_CHARS:
        start -= 1
    while start < at and not text[start].isalnum():  # a name starts with a letter or digit
        start += 1
    return start if start < at else None


def _always(text: str) -> bool:
    return True


# ---- patterns -----------------------------------------------------------------------------------------------
# Every pattern stops at quotes and backslashes, so scrubbing a JSON line keeps it valid JSON.
_SECRET_NAMES = (
    r"(?:api[_-]?key|apikey|secret(?:[_-]?key)?|client[_-]?secret|access[_-]?(?:key|token)|auth[_-]?token|"
    r"token|passw(?:or)?d|pwd)"
)
# A version number written "version 1.2.3.4" or "v1.2.3.4" is not an address.
_VERSION_BEFORE = re.compile(r"(?:version|release|build|ver\.?|v)\s*\Z", re.IGNORECASE)
# The name of an assignment whose value is a secret, just before its `=` or `:`.
_SECRET_NAME_BEFORE = re.compile(r"(?i:\b" + _SECRET_NAMES + r")\\?[\"']?\s*\Z")


@dataclass(frozen=True)
class _Pattern:
    """One kind of item: `regex` finds candidates (the group "v", when it has one, is what gets replaced),
    `check` accepts or rejects the replaced text, `before` is a regex searched in the 40 characters before the
    match that must find something (`before_needed`) or must not."""

    kind: str
    regex: str
    check: Callable[[str], bool] = _always
    before: re.Pattern | None = None
    before_needed: bool = True


# Each regex starts with a literal or a small character class and keeps its look-behinds after the first
# character, so that the regex engine skips the text between candidates at C speed (digits: ~300 MB/s).
_PATTERNS: list[_Pattern] = [
    _Pattern("secret", r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
    *(
        _Pattern(
            "secret", rx + r"(?![A-Za-z0-9_-])", before=re.compile(r"[A-Za-z0-9_-]\Z"), before_needed=False
        )
        for rx in (
            r"AKIA[0-9A-Z]{16}",
            r"gh[pousr]_[A-Za-z0-9]{36,}",
            r"github_pat_[A-Za-z0-9_]{40,}",
            r"glpat-[A-Za-z0-9_-]{20,}",
            r"xox[abposr]-[A-Za-z0-9-]{10,}",
            r"[sr]k_(?:live|test)_[A-Za-z0-9]{16,}",
            r"sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}",
            r"AIza[0-9A-Za-z_-]{35}",
            r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        )
    ),
    _Pattern("secret", r"[:=]\s*(?:\\?[\"'])?(?P<v>[^\s\"'\\,;<>]{8,})", before=_SECRET_NAME_BEFORE),
    _Pattern(
        "credentials", r"://(?P<v>[^\s/@:\"'\\<>]+:[^\s/@\"'\\<>]+)@", before=re.compile(r"[A-Za-z0-9]\Z")
    ),
    _Pattern("email", r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}(?![A-Za-z0-9-])"),
    _Pattern(
        "iban", r"[A-Z](?<![A-Za-z0-9]{2})[A-Z]\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b", _iban_match
    ),
    _Pattern("id", r"[1-8](?<![0-9A-Za-z][1-8])\d{16}[\dXx](?![0-9A-Za-z])", cn_id_ok),
    _Pattern("card", r"\d(?<![\d.,-]\d)(?:[ -]?\d){12,18}(?!\d|[.,]\d|-\d)", _card_ok),
    _Pattern("ssn", r"\d(?<![\d-]\d)\d{2}-\d{2}-\d{4}(?![\d-])", _ssn_ok),
    # +CC then groups of digits (7 to 15 digits in all, E.164)
    _Pattern(
        "phone",
        r"\+(?<![\w+]\+)\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}){1,5}(?![\d.-]\d|\w)",
        _phone_ok,
    ),
    # mainland-Chinese mobiles without +86
    _Pattern("phone", r"1(?<![\w.+-]1)[3-9]\d(?:[ -]?\d{4}){2}(?![\w-]|\.\d)"),
    # North-American numbers with separators: (415) 555-0123, 415-555-0123, 415.555.0123
    _Pattern("phone", r"\((?<![\w.+-]\()\d{3}\) ?\d{3}[-.]\d{4}(?![\w-]|\.\d)"),
    _Pattern("phone", r"\d(?<![\w.+-]\d)\d{2}([-.])\d{3}\1\d{4}(?![\w-]|\.\d)"),
    # found from its first colon (fast), then matched from up to 4 hex digits before it
    _Pattern(
        "ipv6",
        r"(?:[0-9A-Fa-f]{1,4}:|:)(?::|[0-9A-Fa-f]{1,4}:){1,7}(?:[0-9A-Fa-f]{1,4}|:|"
        r"\d{1,3}(?:\.\d{1,3}){3})?(?:%[0-9A-Za-z]+)?(?![\w:]|\.\d)",
        _ipv6_ok,
    ),
    _Pattern(
        "ipv4",
        r"\d(?<![\w.-]\d)\d{0,2}(?:\.\d{1,3}){3}(?![\w-]|\.\d)",
        _ipv4_ok,
        before=_VERSION_BEFORE,
        before_needed=False,
    ),
]


_HEX = frozenset("0123456789abcdefABCDEF")
_IPV6_EDGE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:.")


def _ipv6_candidate(rx: re.Pattern, text: str, pos: int) -> re.Match | None:
    """The next IPv6 candidate from `pos`: found by its first colon, matched from the hex digits before it."""
    n = len(text)
    while pos < n:
        colon = text.find(":", pos)
        if colon < 0:
            return None
        start = colon
        while start > pos and colon - start < 4 and text[start - 1] in _HEX:
            start -= 1
        if start == 0 or text[start - 1] not in _IPV6_EDGE:
            m = rx.match(text, start)
            if m is not None:
                return m
        pos = colon + 1
        while pos < n and text[pos] == ":":
            pos += 1
    return None


class Scrubber:
    """Finds PII in text and replaces it with placeholders. Each pattern is searched on its own (a pattern that
    starts with a digit, `@` or `://` lets the regex engine skip the rest of the text quickly); where the items
    of two patterns overlap, the one listed first in `_PATTERNS` wins."""

    def __init__(self, options: ScrubOptions | None = None):
        self.options = options or ScrubOptions()
        self.options.validate()
        self._patterns = [(p, re.compile(p.regex)) for p in _PATTERNS if p.kind in self.options.types]

    @staticmethod
    def _find(p: _Pattern, rx: re.Pattern, text: str) -> list[tuple[int, int]]:
        found = []
        pos, n = 0, len(text)
        has_v = "v" in rx.groupindex
        while pos < n:
            if p.kind == "ipv6":
                m = _ipv6_candidate(rx, text, pos)
            else:
                m = rx.search(text, pos)
            if m is None:
                break
            pos = m.start() + 1  # where to go on when this candidate is rejected
            start, end = m.span("v") if has_v else m.span()
            if p.kind == "email":  # the pattern starts at the @ (fast); the name before it is read backwards
                start = _local_part_start(text, start)
                if start is None:
                    continue
            if p.before is not None:
                near = p.before.search(text, max(0, m.start() - 40), m.start()) is not None
                if near != p.before_needed:
                    continue
            if not p.check(text[start:end]):
                continue
            found.append((start, end))
            pos = m.end()
        return found

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """The (start, end, type) of every item found, in order, not overlapping."""
        taken: list[tuple[int, int, str]] = []
        for p, rx in self._patterns:
            spans = self._find(p, rx, text)
            if spans:
                taken = _merge(taken, [(s, e, p.kind) for s, e in spans])
        if self.options.names is not None:
            names = [(s, e, t) for s, e, t in self.options.names(text) if t in NAME_TYPES]
            taken = _merge(taken, names)
        return taken

    def scrub(self, text: str) -> tuple[str, dict[str, int]]:
        """The text with every item replaced by its placeholder, and the number of items of each type."""
        spans = self.spans(text)
        if not spans:
            return text, {}
        out, counts, pos = [], {}, 0
        for start, end, kind in spans:
            out.append(text[pos:start])
            out.append(PLACEHOLDERS[kind])
            counts[kind] = counts.get(kind, 0) + 1
            pos = end
        out.append(text[pos:])
        return "".join(out), counts

    def stream(self) -> ScrubStream:
        """A scrubber for one document arriving in pieces cut at line boundaries (a private key block split
        between two pieces is held back until its end arrives)."""
        return ScrubStream(self)


_OPEN_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
_HOLD_LIMIT = 1 << 16  # a key block is a few KB; an unterminated BEGIN line is not held beyond this


class ScrubStream:
    """Scrubs a document piece by piece and adds up the counts."""

    def __init__(self, scrubber: Scrubber):
        self.scrubber = scrubber
        self.counts: dict[str, int] = {}
        self.held = ""

    def feed(self, piece: str, last: bool = False) -> str:
        text = self.held + piece if self.held else piece
        self.held = ""
        if not last and "secret" in self.scrubber.options.types and "-----BEGIN" in text:
            opened = list(_OPEN_KEY.finditer(text))
            if opened:
                tail = opened[-1].start()
                if "PRIVATE KEY-----" not in text[opened[-1].end() :] and len(text) - tail < _HOLD_LIMIT:
                    text, self.held = text[:tail], text[tail:]
        out, counts = self.scrubber.scrub(text)
        for kind, n in counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + n
        return out


def _merge(kept: list[tuple[int, int, str]], new: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """The spans of `kept` (sorted, not overlapping) plus those of `new` that overlap none of them, in order."""
    if not kept:
        return _merge([(-2, -1, "")], new)[1:]
    starts = [s for s, _, _ in kept]
    out = list(kept)
    last_end = -1
    for span in sorted(new):
        if span[0] < last_end:  # overlaps the previous new span
            continue
        i = bisect.bisect_right(starts, span[0])
        if i > 0 and kept[i - 1][1] > span[0]:
            continue
        if i < len(kept) and kept[i][0] < span[1]:
            continue
        out.append(span)
        last_end = span[1]
    out.sort()
    return out


def add_counts(total: dict[str, int], counts: dict[str, int]) -> dict[str, int]:
    for kind, n in counts.items():
        total[kind] = total.get(kind, 0) + n
    return total


# ---- files --------------------------------------------------------------------------------------------------
READ_CHARS = 1 << 20  # text is scrubbed in pieces of about this many characters, cut after a line break


def scrub_files(
    inputs: list[str],
    out: str | os.PathLike,
    options: ScrubOptions | None = None,
    encoding: str = "utf-8",
    overwrite: bool = False,
) -> dict:
    """Scrub the text of `inputs` (files, or "-" for stdin) into one file `out`, in order; returns a report:
    {"out", "inputs", "bytes", "seconds", "mb_per_s", "counts": {type: n}, "total"}. Line breaks and everything
    that is not PII are kept byte for byte (a JSON Lines file stays valid: no placeholder holds a quote)."""
    scrubber = Scrubber(options)
    encoding = check_encoding(encoding)
    for given in inputs:
        if given != "-" and not Path(given).is_file():
            raise DataError(f"input {given} is not a file")
    dest = check_output(out, folder=False, overwrite=bool(overwrite), inputs=inputs, error=DataError)
    counts: dict[str, int] = {}
    nbytes = 0
    started = time.perf_counter()
    with staged(dest, folder=False) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        for given in inputs:
            stream = scrubber.stream()
            try:
                for piece, last in _pieces(given, encoding):
                    nbytes += len(piece.encode("utf-8"))
                    fh.write(stream.feed(piece, last))
            except UnicodeDecodeError:
                raise DataError(f"{given} is not {encoding} text; give its --encoding") from None
            add_counts(counts, stream.counts)
    seconds = time.perf_counter() - started
    return {
        "out": str(dest),
        "inputs": list(inputs),
        "bytes": nbytes,
        "seconds": round(seconds, 3),
        "mb_per_s": round(nbytes / 1e6 / max(seconds, 1e-9), 2),
        "counts": {kind: counts[kind] for kind in (*TYPES, *NAME_TYPES) if counts.get(kind)},
        "total": sum(counts.values()),
    }


def _pieces(given: str, encoding: str) -> Iterator[tuple[str, bool]]:
    """The text of a file (or stdin) in pieces of about READ_CHARS characters that end after a line break."""
    fh = sys.stdin if given == "-" else open(given, encoding=encoding, newline="")
    try:
        carry = ""
        while True:
            block = fh.read(READ_CHARS)
            if not block:
                break
            text = carry + block
            cut = text.rfind("\n") + 1
            if cut <= 0:  # a line longer than a block: keep reading (bounded by the file)
                carry = text
                continue
            carry = text[cut:]
            yield text[:cut], False
        yield carry, True
    finally:
        if fh is not sys.stdin:
            fh.close()
