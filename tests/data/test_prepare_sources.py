"""Reading inputs for `lmforge prepare`: files, folders, globs, structured files, stdin, streaming pieces."""

from __future__ import annotations

import io
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.data.prepare import iter_documents
from lmforge.data.sources import expand_inputs, iter_text_pieces, split_text_stream
from lmforge.errors import DataError


def test_folder_is_walked_recursively_in_sorted_order_skipping_hidden_and_binary(tmp_path):
    root = tmp_path / "corpus"
    for rel in ["b.txt", "a.md", "sub/c.txt", "sub/deeper/d.py", ".hidden.txt", ".git/x.txt", "img.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x", encoding="utf-8")
    paths = [s.path for s in expand_inputs([str(root)])]
    assert paths == [str(root / p) for p in ["a.md", "b.txt", "sub/c.txt", "sub/deeper/d.py"]]


def test_glob_is_sorted_and_kinds_follow_the_suffix(tmp_path):
    for name in ["z.txt", "a.txt", "m.jsonl", "p.html"]:
        (tmp_path / name).write_text("{}", encoding="utf-8")
    sources = expand_inputs([str(tmp_path / "*.txt"), str(tmp_path / "*.jsonl"), str(tmp_path / "p.html")])
    assert [s.path for s in sources] == [str(tmp_path / n) for n in ["a.txt", "z.txt", "m.jsonl", "p.html"]]
    assert [s.kind for s in sources] == ["text", "text", "json", "html"]


def test_the_same_file_given_twice_is_read_once(tmp_path):
    (tmp_path / "a.txt").write_text("x", encoding="utf-8")
    assert len(expand_inputs([str(tmp_path / "a.txt"), str(tmp_path), str(tmp_path / "*.txt")])) == 1


def test_missing_input_and_unmatched_glob_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        expand_inputs([str(tmp_path / "nope.txt")])
    with pytest.raises(DataError, match="no files match"):
        expand_inputs([str(tmp_path / "*.nothing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no text files"):
        expand_inputs([str(tmp_path / "empty")])


def test_paragraph_line_and_file_splitting_across_chunk_boundaries():
    chunks = ["para one\nline two\n", "\n  \npara", " two\n\n", "\npara three\n"]
    assert [t for t, last in split_text_stream(chunks, "paragraph") if last] == [
        "para one\nline two",
        "para two",
        "para three\n",
    ]
    assert list(split_text_stream(chunks, "line")) == [
        ("para one", True),
        ("line two", True),
        ("para two", True),
        ("para three", True),
    ]
    assert list(split_text_stream(chunks, "file")) == [("".join(chunks), True)]


def test_a_large_document_comes_in_pieces_cut_at_line_boundaries():
    text = "".join(f"line {i} " + "x" * (i % 17) + "\n" for i in range(2000))
    chunks = [text[i : i + 333] for i in range(0, len(text), 333)]
    pieces = list(split_text_stream(chunks, "file", piece_chars=200))
    assert len(pieces) > 50
    assert "".join(p for p, _ in pieces) == text
    assert [last for _, last in pieces] == [False] * (len(pieces) - 1) + [True]
    assert all(len(p) <= 200 and p.endswith("\n") for p, _ in pieces[:-1])
    # The same with paragraphs: a paragraph longer than a piece is still one document.
    doc2 = list(split_text_stream([text + "\n\nshort one"], "paragraph", piece_chars=200))
    ends = [i for i, (_, last) in enumerate(doc2) if last]
    assert len(ends) == 2 and "".join(p for p, _ in doc2[: ends[0] + 1]) == text.rstrip("\n")


def test_a_line_without_any_newline_is_still_cut_into_pieces():
    text = "word " * 1000
    pieces = list(split_text_stream([text], "file", piece_chars=100))
    assert "".join(p for p, _ in pieces) == text
    assert max(len(p) for p, _ in pieces) <= 100


def test_binary_file_is_named_in_the_error(tmp_path):
    f = tmp_path / "image.dat"
    f.write_bytes(b"GIF89a\x00\x01\x02text")
    with pytest.raises(DataError, match=r"image\.dat looks like a binary file"):
        list(iter_documents([str(f)]))


def test_undecodable_bytes_suggest_encoding_and_the_right_encoding_works(tmp_path):
    f = tmp_path / "latin.txt"
    f.write_bytes("café au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.txt is not valid utf-8.*--encoding"):
        list(iter_documents([str(f)]))
    assert list(iter_documents([str(f)], encoding="latin-1")) == ["café au lait\n"]


def test_utf16_with_its_nul_bytes_is_text_and_utf8_bom_is_dropped(tmp_path):
    f16 = tmp_path / "wide.txt"
    f16.write_text("wide text\n", encoding="utf-16")
    assert list(iter_documents([str(f16)], encoding="utf-16")) == ["wide text\n"]
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfhello")
    assert list(iter_documents([str(bom)])) == ["hello"]


def test_unknown_encoding_is_a_data_error(tmp_path):
    (tmp_path / "a.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="unknown encoding 'klingon'"):
        list(iter_documents([str(tmp_path / "a.txt")], encoding="klingon"))


def test_jsonl_json_csv_tsv_and_parquet_records(tmp_path):
    rows = [{"text": "first doc", "id": 1}, {"text": "second doc", "id": 2}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps(rows), encoding="utf-8")
    (tmp_path / "c.csv").write_text('id,text\n1,"csv, with comma"\n2,"multi\nline"\n', encoding="utf-8")
    (tmp_path / "d.tsv").write_text("id\ttext\n1\ttab separated\n", encoding="utf-8")
    pq.write_table(pa.table({"text": ["parquet one", "parquet two"], "n": [1, 2]}), tmp_path / "e.parquet")
    assert list(
        iter_documents([str(tmp_path / n) for n in ["a.jsonl", "b.json", "c.csv", "d.tsv", "e.parquet"]])
    ) == [
        "first doc",
        "second doc",
        "first doc",
        "second doc",
        "csv, with comma",
        "multi\nline",
        "tab separated",
        "parquet one",
        "parquet two",
    ]


def test_missing_field_names_the_field_and_the_columns(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"content": "x", "id": 1}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"no field 'text' \(its columns: content, id\).*--text-field"):
        list(iter_documents([str(f)]))
    assert list(iter_documents([str(f)], text_field="content")) == ["x"]


def test_stdin_is_read_as_bytes_and_split(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"one\ntwo\n\nthree\n")))
    assert list(iter_documents(["-"], doc_split="line")) == ["one", "two", "three"]


def test_text_pieces_of_a_file(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("a\n\nb\n", encoding="utf-8")
    (source,) = expand_inputs([str(f)])
    assert list(iter_text_pieces(source, "paragraph")) == [("a", True), ("b\n", True)]


@pytest.mark.parametrize(
    "chunks", [["aaaa bbbb\n\n", "dddd"], ["aaaa bbbb\n \n", "dddd"], ["aaaa bbbb\n", "\ndddd"]]
)
def test_a_blank_line_at_a_chunk_edge_still_separates_long_paragraphs(chunks):
    pieces = list(split_text_stream(chunks, "paragraph", piece_chars=10))
    docs, cur = [], ""
    for text, last in pieces:
        cur += text
        if last:
            docs.append(cur)
            cur = ""
    assert [d.strip() for d in docs] == ["aaaa bbbb", "dddd"]


@pytest.mark.parametrize("seed", range(6))
def test_streamed_splitting_equals_splitting_the_whole_text(seed):
    import random

    from lmforge.data.sources import _PARAGRAPH_BREAK

    rng = random.Random(seed)
    atoms = ["word", "x", " ", "  ", "\n", "\n\n", "\n \n", "\t", "\r\n", "longerword" * 3]
    text = "".join(rng.choice(atoms) for _ in range(3000))
    cuts = sorted(rng.sample(range(1, len(text)), 60))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    expected = {
        "file": [text],
        "paragraph": [p for p in _PARAGRAPH_BREAK.split(text) if p.strip()],
        "line": [line for line in text.split("\n") if line.strip()],
    }
    for mode, want in expected.items():
        docs, cur = [], ""
        for piece, last in split_text_stream(chunks, mode, piece_chars=rng.choice([7, 40, 500])):
            cur += piece
            if last:
                docs.append(cur)
                cur = ""
        # A whitespace-only stretch longer than a piece may come out as a document of its own; prepare
        # then counts it as empty.
        assert [d for d in docs if d.strip()] == want, mode
