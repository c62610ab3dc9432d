"""Cleaning documents: HTML to text, Unicode normalisation, whitespace, Chinese segmentation, stopwords.

Each step is switchable. Documents arrive as pieces cut at line boundaries (see `sources.py`), so every
step works line by line, and the only state kept across pieces is the blank-line run at a piece's end.
Leading indentation is never touched: code corpora keep their structure.
"""

from __future__ import annotations

import functools
import logging
import re
import string
import unicodedata
from importlib import resources
from pathlib import Path

from lmforge.data.stemming import stem_text, stemmer
from lmforge.errors import DataError
from lmforge.extras import require

NORMALIZATION_FORMS = ("NFC", "NFKC", "NFD", "NFKD")
HTML_MODES = ("auto", "on", "off")

# ---- HTML -------------------------------------------------------------------------------------------
_DROP_TAGS = {
    "script",
    "style",
    "noscript",
    "template",
    "head",
    "title",
    "meta",
    "link",
    "iframe",
    "object",
    "embed",
    "svg",
    "math",
    "canvas",
    "select",
    "option",
    "button",
    "input",
    "textarea",
    "-comment",
    "!doctype",
}
# Block elements that separate paragraphs (a blank line) and those that only end a line.
_PARAGRAPH_TAGS = {
    "p",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "pre",
    "blockquote",
    "table",
    "ul",
    "ol",
    "dl",
    "section",
    "article",
    "header",
    "footer",
    "aside",
    "nav",
    "main",
    "figure",
    "form",
    "fieldset",
    "details",
    "hr",
    "address",
}
_LINE_TAGS = {
    "div",
    "li",
    "tr",
    "dt",
    "dd",
    "figcaption",
    "caption",
    "summary",
    "legend",
    "thead",
    "tbody",
    "tfoot",
    "center",
    "body",
    "html",
    "option",
}
_HTML_WS = re.compile(r"[ \t\n\r\f]+")
_HTML_STRONG = re.compile(r"<!doctype\s+html|<html[\s>]|<body[\s>]|<head[\s>]", re.IGNORECASE)
_HTML_CLOSING = re.compile(
    r"</(p|div|span|a|li|ul|ol|td|tr|table|h[1-6]|script|style|b|i|em|strong|section|article|blockquote)\s*>",
    re.IGNORECASE,
)


_ANY_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>")


def looks_like_html(text: str) -> bool:
    """Whether the start of `text` is HTML: a doctype/html/head/body tag, or markup dense enough to be a
    page fragment (three different closing tags, a tag every 200 characters, tags on most lines).

    Conservative on purpose: code or Markdown quoting a few tags stays text. Force it with html="on".
    """
    head = text[:4096]
    if "<" not in head:
        return False
    if _HTML_STRONG.search(head):
        return True
    if len({m.group(1).lower() for m in _HTML_CLOSING.finditer(head)}) < 3:
        return False
    if len(_ANY_TAG.findall(head)) * 200 < len(head):
        return False
    lines = [line for line in head.splitlines() if line.strip()]
    return 2 * sum(1 for line in lines if _ANY_TAG.search(line)) >= len(lines)


class _TextBuilder:
    """Collects text runs and line breaks, never emitting spaces at line edges or more than one blank line."""

    def __init__(self):
        self.parts: list[str] = []
        self.pending = 0  # newlines wanted before the next text
        self.line_start = True

    def newline(self, n: int) -> None:
        if self.parts:
            self.pending = max(self.pending, n)

    def text(self, s: str, pre: bool) -> None:
        if not pre:
            s = _HTML_WS.sub(" ", s)
            if self.line_start or self.pending:
                s = s.lstrip(" ")
        if not s:
            return
        if self.pending:
            self.parts[-1] = self.parts[-1].rstrip(" ")
            self.parts.append("\n" * self.pending)
            self.pending = 0
        self.parts.append(s)
        self.line_start = s.endswith("\n")

    def result(self) -> str:
        return "".join(self.parts).rstrip()


def html_to_text(html: str) -> str:
    """Visible text of an HTML document or fragment, with block elements as line breaks.

    Uses the lexbor parser (selectolax): script, style, noscript and the <head> are dropped, entities
    decoded, whitespace collapsed as a browser would (except inside <pre>).
    """
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(html)
    root = tree.body if tree.body is not None else tree.root
    if root is None:
        return ""
    out = _TextBuilder()
    pre_depth = 0
    # Iterative depth-first walk (deeply nested pages would overflow Python's recursion limit).
    stack: list[tuple[object, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        tag = node.tag
        if leaving:
            if tag == "pre":
                pre_depth -= 1
            out.newline(2 if tag in _PARAGRAPH_TAGS else 1)
            continue
        if tag == "-text":
            out.text(node.text_content or "", pre_depth > 0)
            continue
        if tag in _DROP_TAGS or (tag or "").startswith("-"):
            continue
        if tag == "br":
            if out.parts:
                out.pending += 1
            continue
        if tag in _PARAGRAPH_TAGS or tag in _LINE_TAGS:
            out.newline(2 if tag in _PARAGRAPH_TAGS else 1)
            if tag == "pre":
                pre_depth += 1
            stack.append((node, True))
        elif tag in ("td", "th"):
            out.text(" ", False)
        children = list(node.iter(include_text=True))
        stack.extend((child, False) for child in reversed(children))
    return out.result()


# ---- whitespace ---------------------------------------------------------------------------------------
# C0 and C1 control characters except \t and \n (\r is turned into \n before).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Trailing whitespace (not the newline) at each line end.
_TRAILING = re.compile(r"[^\S\n]+$", re.MULTILINE)
_BLANK_RUN = re.compile(r"\n{4,}")  # 3 or more blank lines
# Line-by-line whitespace cleaning and a substring test before _BLANK_RUN (the same output, less time); off only to
# compare with the regular-expression path (tests) or to rule it out.
FAST_CLEAN = True


def clean_lines(text: str, strip_last_line: bool = True) -> str:
    """\\r\\n and lone \\r become \\n, control characters go, trailing whitespace of each line goes.

    Leading indentation is kept. With strip_last_line=False the text after the last newline is an
    unfinished line (a piece cut mid-line) and keeps its trailing whitespace.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not FAST_CLEAN:
        return _clean_lines_regex(text, strip_last_line)
    # Line by line: the same result as _clean_lines_regex, ~5x faster on prose, where _TRAILING tries a match at
    # every space. A printable line has no control character (all of _CONTROL's are unprintable), and str.rstrip()
    # strips exactly the characters of [^\S\n] (both are Py_UNICODE_ISSPACE) from a line without \n.
    lines = text.split("\n")
    keep = len(lines) - 1 if not strip_last_line else -1  # the unfinished last line keeps its trailing space
    for i, line in enumerate(lines):
        if not line.isprintable():
            line = _CONTROL.sub("", line)
        lines[i] = line if i == keep else line.rstrip()
    return "\n".join(lines)


def _clean_lines_regex(text: str, strip_last_line: bool) -> str:
    """clean_lines with whole-text regular expressions (FAST_CLEAN off): the reference the fast path must equal."""
    text = _CONTROL.sub("", text)
    if strip_last_line:
        return _TRAILING.sub("", text)
    head, sep, tail = text.rpartition("\n")
    return _TRAILING.sub("", head) + sep + tail if sep else text


def clean_whitespace(text: str) -> str:
    """Whole-document whitespace cleaning: `clean_lines`, then at most 2 blank lines in a row, no blank
    lines at the start, no whitespace at the end."""
    text = clean_lines(text)
    return _BLANK_RUN.sub("\n\n\n", text.lstrip("\n")).rstrip()


# ---- segmentation and stopwords -------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def load_jieba():
    """jieba, initialised once, with its logging quieted (Chinese word segmentation: the zh extra)."""
    jieba = require("jieba", extra="zh", feature="Chinese word segmentation (--segment, whole-word masking)")

    jieba.setLogLevel(logging.WARNING)
    logging.getLogger("jieba").setLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def segment_words(text: str) -> str:
    """Chinese word segmentation with jieba, line by line: words joined by single spaces."""
    jieba = load_jieba()
    return "\n".join(" ".join(w for w in jieba.cut(line) if w.strip()) for line in text.split("\n"))


_PUNCT = string.punctuation + "，。、；：？！“”‘’（）《》【】…—·「」『』〈〉～"


def load_stopwords(spec: str) -> frozenset[str]:
    """The built-in list "en" or "zh", or a file with one word per line (# starts a comment). Lower-cased."""
    if spec in ("en", "zh"):
        text = (
            resources.files("lmforge.data").joinpath("stopwords", f"{spec}.txt").read_text(encoding="utf-8")
        )
        name = f"built-in {spec} list"
    else:
        path = Path(spec)
        if not path.is_file():
            raise DataError(
                f"stopword list {spec!r} not found; use en, zh or the path of a file with one word per line"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError(f"stopword file {spec} is not valid UTF-8; save it as UTF-8") from None
        name = str(path)
    words = frozenset(
        w.strip().lower() for w in text.splitlines() if w.strip() and not w.lstrip().startswith("#")
    )
    if not words:
        raise DataError(f"stopword list {name} is empty; put one word per line in it")
    return words


def remove_stopwords(text: str, stopwords: frozenset[str]) -> str:
    """Drop the words (whitespace-separated, compared lower-cased and without surrounding punctuation) that
    are stopwords, line by line. Segment Chinese text first (segment=True), it has no spaces."""
    out = []
    for line in text.split("\n"):
        kept = []
        for tok in line.split():
            low = tok.lower()
            if low in stopwords:
                continue
            core = low.strip(_PUNCT)
            if core and core in stopwords:
                continue
            kept.append(tok)
        out.append(" ".join(kept))
    return "\n".join(out)


# ---- the whole pipeline --------------------------------------------------------------------------
class Cleaner:
    """The cleaning options of a run; `document()` gives the stateful cleaner of one document."""

    def __init__(
        self,
        html: str = "auto",
        normalize: str | None = "NFC",
        clean_whitespace: bool = True,
        segment: bool = False,
        stopwords: frozenset[str] | None = None,
        stem: str | None = None,
    ):
        self.html = html
        self.stem = stem  # a Snowball language: every word becomes its stem (data/stemming.py)
        if stem:
            stemmer(stem)  # an unknown language or a missing extra is refused before any work
        self.normalize = normalize
        self.clean_whitespace = clean_whitespace
        self.segment = segment
        self.stopwords = stopwords
        if segment:
            load_jieba()  # load the dictionary once, up front

    def document(self, html_source: bool = False) -> DocumentCleaner:
        return DocumentCleaner(self, html_source)

    def clean(self, text: str, html_source: bool = False) -> str:
        """Clean a whole document held in memory."""
        return self.document(html_source).feed(text, last=True)


class DocumentCleaner:
    """Cleans the pieces of one document in order; `feed(piece, last)` returns the cleaned text to keep."""

    def __init__(self, cleaner: Cleaner, html_source: bool):
        self.c = cleaner
        self.html_source = html_source
        self.is_html: bool | None = None
        self.started = False  # some text has been returned
        self.pending = 0  # newlines held back from the end of the previous piece

    def feed(self, piece: str, last: bool) -> str:
        c = self.c
        if self.is_html is None:
            self.is_html = c.html == "on" or (
                c.html == "auto" and (self.html_source or looks_like_html(piece))
            )
        text = piece
        if self.is_html:
            # Each piece of a (rare, many-MB) HTML document is parsed on its own; pieces end at line breaks.
            text = html_to_text(text)
            if not last and text:
                text += "\n"
        if c.normalize:
            text = unicodedata.normalize(c.normalize, text)
        if c.clean_whitespace:
            text = clean_lines(text, strip_last_line=last or text.endswith("\n"))
        if c.segment:
            text = segment_words(text)
        if c.stopwords:
            text = remove_stopwords(text, c.stopwords)
        if c.stem:
            text = "\n".join(stem_text(line, c.stem) for line in text.split("\n"))
        if not c.clean_whitespace:
            return text
        return self._join(text, last)

    def _join(self, text: str, last: bool) -> str:
        # Drop blank lines at the start, whitespace at the end, and keep at most 2 blank lines in a row,
        # also across piece boundaries.
        core = text.rstrip("\n")
        trailing = len(text) - len(core)
        if not core:
            self.pending += trailing
            return ""
        stripped = core.lstrip("\n")
        newlines = self.pending + len(core) - len(stripped)
        prefix = "\n" * min(newlines, 3) if self.started else ""
        self.started = True
        self.pending = trailing
        # The substring test is much faster than the regex scan, which finds nothing in most documents.
        if "\n\n\n\n" in stripped or not FAST_CLEAN:
            stripped = _BLANK_RUN.sub("\n\n\n", stripped)
        out = prefix + stripped
        if last:
            out = out.rstrip()
        return out
