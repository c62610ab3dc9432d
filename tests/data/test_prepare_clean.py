"""Cleaning and deduplication steps of `lmforge prepare`."""

from __future__ import annotations

import random

import pytest

from lmforge.data.clean import (
    Cleaner,
    clean_whitespace,
    html_to_text,
    load_stopwords,
    looks_like_html,
    remove_stopwords,
    segment_words,
)
from lmforge.data.dedup import DigestSet, count_near_duplicates
from lmforge.errors import DataError

PAGE = """<!DOCTYPE html><html><head><title>Title</title><style>p { color: red }</style>
<script>var secret = "do not keep";</script></head>
<body><h1>Heading</h1><p>First   paragraph with <b>bold</b> &amp; entities.</p>
<noscript>enable javascript</noscript><div>line one<br>line two</div>
<ul><li>item a</li><li>item b</li></ul><pre>  indented
    code</pre><script>alert("x")</script></body></html>"""


def test_html_to_text_drops_scripts_styles_and_makes_blocks_lines():
    text = html_to_text(PAGE)
    for gone in ("secret", "alert", "color", "javascript", "Title", "<", "&amp;"):
        assert gone not in text
    assert text == (
        "Heading\n\nFirst paragraph with bold & entities.\n\nline one\nline two\n\n"
        "item a\nitem b\n\n  indented\n    code"
    )


def test_looks_like_html_is_conservative():
    assert looks_like_html(PAGE)
    assert looks_like_html("<p>a</p><div>b</div><em>c</em>")
    assert not looks_like_html("if a < b and c > d: print('<p>')")
    assert not looks_like_html("# Markdown with one <b>bold</b> tag")


def test_whitespace_cleaning_keeps_indentation():
    raw = "\n\n  def f():\r\n\t    return 1   \n\n\n\n\n\nx\x07y\x1bz\x7f\t \nlast  \n\n"
    assert clean_whitespace(raw) == "  def f():\n\t    return 1\n\n\nxyz\nlast"


def test_normalisation_is_switchable():
    assert Cleaner(normalize="NFC").clean("cafe\u0301") == "caf\u00e9"
    assert Cleaner(normalize="NFKC").clean("\ufb01") == "fi"
    assert Cleaner(normalize=None).clean("cafe\u0301") == "cafe\u0301"


def test_cleaning_off_keeps_the_text():
    raw = "a  \r\n\n\n\n\nb\x07"
    assert Cleaner(clean_whitespace=False, normalize=None).clean(raw) == raw


def test_cleaning_a_document_in_pieces_equals_cleaning_it_whole():
    rng = random.Random(0)
    lines = []
    for _ in range(400):
        lines.append(rng.choice(["", "   ", "\t", "  code()", "text  ", "x\x01y", "cafe\u0301"]))
    raw = "\n\n" + "\r\n".join(lines) + "\n\n\n"
    whole = Cleaner().clean(raw)
    # Cut at line boundaries at random places, as the readers do.
    cuts = sorted(rng.sample([i + 1 for i, ch in enumerate(raw) if ch == "\n"], 40))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
    doc = Cleaner().document()
    assert "".join(doc.feed(p, i == len(pieces) - 1) for i, p in enumerate(pieces)) == whole
    assert "\n\n\n\n" not in whole and "\n\n\n" in whole
    assert whole == whole.strip() and "\r" not in whole and "\x01" not in whole and "cafe\u0301" not in whole


def test_html_mode_auto_on_off():
    snippet = "<p>a</p><div>b</div><em>c</em><script>bad()</script>"
    assert Cleaner(html="auto").clean(snippet) == "a\n\nb\nc"
    assert Cleaner(html="off").clean(snippet) == snippet
    assert Cleaner(html="on").clean("x <b>y</b>") == "x y"
    assert Cleaner(html="auto").clean("x <b>y</b>") == "x <b>y</b>"
    assert Cleaner(html="auto").clean("<b>y</b>", html_source=True) == "y"


def test_jieba_segmentation_and_stopwords():
    assert segment_words("我爱北京天安门") == "我 爱 北京 天安门"
    zh = load_stopwords("zh")
    assert {"的", "了", "是", "我"} <= zh and len(zh) > 200
    assert (
        remove_stopwords(segment_words("我爱北京天安门。\n今天的天气很好"), zh)
        == "爱 北京 天安门\n今天 天气 好"
    )
    en = load_stopwords("en")
    assert len(en) > 200
    assert remove_stopwords("The cat sat on the mat, and it was happy.", en) == "cat sat mat, happy."


def test_stopword_file_and_missing_file(tmp_path):
    f = tmp_path / "stop.txt"
    f.write_text("# my list\nfoo\nBar\n", encoding="utf-8")
    words = load_stopwords(str(f))
    assert words == {"foo", "bar"}
    assert remove_stopwords("foo BAR baz", words) == "baz"
    with pytest.raises(DataError, match="stopword list .* not found"):
        load_stopwords(str(tmp_path / "nope.txt"))


def test_digest_set_grows_and_finds_members():
    rng = random.Random(1)
    values = [rng.getrandbits(64) for _ in range(20_000)] + [0]
    s = DigestSet(capacity=16)
    assert all(s.add(v) for v in values)
    assert not any(s.add(v) for v in values)
    assert len(s) == len(values) and all(v in s for v in values[::97])
    assert rng.getrandbits(64) not in s


def test_near_duplicates_are_found_and_distinct_texts_kept():
    rng = random.Random(2)
    vocab = [f"w{i}" for i in range(500)]
    base = [" ".join(rng.choice(vocab) for _ in range(120)) for _ in range(5)]
    near = base[0].split()
    near[60] = "changed"
    docs = [*base, " ".join(near)]
    assert count_near_duplicates(docs, threshold=0.8) == 1
    assert count_near_duplicates(base, threshold=0.8) == 0


def test_markdown_with_a_few_tags_is_not_parsed_as_html():
    md = (
        "# Title\n\nSome text with <b>bold</b>, <i>italic</i> and <a href='x'>a link</a>.\n\n"
        + "* item\n" * 60
    )
    assert not looks_like_html(md)
    assert Cleaner().clean(md) == md.strip()
