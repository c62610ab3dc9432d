"""`lmforge.data.prepare.prepare` end to end: manifest, shards, splits, dedup, determinism, atomicity, errors."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lmforge.data.prepare as prep
from lmforge.data.prepare import prepare
from lmforge.data.shards import MANIFEST_FORMAT, TokenShards, read_manifest, token_dtype
from lmforge.errors import DataError, LmforgeError, TokenizerError
from lmforge.tokenizers import Tokenizer

WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()
)


def make_docs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        lines = [" ".join(rng.choice(WORDS, size=8)) for _ in range(3)]
        docs.append(f"Document {i}.\n" + "\n".join(lines))
    return docs


def write_corpus(folder: Path, docs: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(docs):
        (folder / f"doc{i:03d}.txt").write_text(d + "\n", encoding="utf-8")
    return folder


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_manifest_is_consistent_with_the_shards_and_decodes_to_the_documents(tmp_path, split_ids, split_docs):
    docs = make_docs(60)
    corpus = write_corpus(tmp_path / "corpus", docs)
    out = tmp_path / "data"
    m = prepare([str(corpus)], str(out), tokenizer="char", val_fraction=0.2, progress=False)
    assert m == read_manifest(out)
    assert m["format"] == MANIFEST_FORMAT and m["dtype"] == "uint16"
    tok = Tokenizer.load(out)
    assert m["vocab_size"] == tok.vocab_size and m["eos_id"] == tok.eos_id
    assert m["tokenizer"] == {
        "file": "tokenizer.json",
        "kind": "char",
        "sha256": tok.sha256(),
        "trained": True,
        "source": None,
    }
    assert m["removed"] == {"empty": 0, "duplicates": 0, "near_duplicates": 0}
    assert len(m["sources"]) == 60 and sum(s["documents"] for s in m["sources"]) == 60
    decoded = {}
    for split in ("train", "val"):
        info = m["splits"][split]
        shards = TokenShards(out, split)
        ids = split_ids(out, split)
        assert shards.tokens == info["tokens"] == ids.size == sum(s["tokens"] for s in info["shards"])
        assert (out / split / info["shards"][0]["file"]).stat().st_size == 2 * info["tokens"]
        decoded[split] = split_docs(out, split)
        assert len(decoded[split]) == info["documents"] == int((ids == tok.eos_id).sum())
        assert info["bytes"] == shards.bytes == sum(len(d.encode()) for d in decoded[split])
    # Every document lands in exactly one split, intact; files come in sorted order within a split.
    assert sorted(decoded["train"] + decoded["val"]) == sorted(docs)
    assert decoded["train"] == [d for d in docs if d in set(decoded["train"])]
    assert 0 < m["splits"]["val"]["documents"] < 30
    assert m["options"]["val_fraction"] == 0.2 and m["options"]["tokenizer"] == "char" and m["seed"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "tokenizer.json", "train", "val"]
    assert leftovers(tmp_path) == []


def test_doc_split_depends_on_seed_and_text_only(tmp_path, split_docs):
    docs = make_docs(200)
    corpus = write_corpus(tmp_path / "c", docs)
    val = {}
    for name, seed in [("a", 0), ("b", 0), ("s1", 1)]:
        prepare([str(corpus)], str(tmp_path / name), tokenizer="char", seed=seed, progress=False)
        val[name] = set(split_docs(tmp_path / name, "val"))
    assert val["a"] == val["b"] != val["s1"]
    assert 5 <= len(val["a"]) <= 40  # about 10% of 200
    # A document's split does not depend on the other documents: a subset keeps the assignment.
    sub = write_corpus(tmp_path / "sub", docs[:100])
    prepare([str(sub)], str(tmp_path / "d"), tokenizer="char", progress=False)
    assert set(split_docs(tmp_path / "d", "val")) == val["a"] & set(docs[:100])


def test_tail_split_val_is_the_end_of_the_corpus_cut_at_a_line(tmp_path, split_docs):
    lines = [f"Line {i}: " + " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(6)) for i in range(400)]
    text = "\n".join(lines)
    (tmp_path / "book.txt").write_text(text + "\n", encoding="utf-8")
    m = prepare(
        [str(tmp_path / "book.txt")],
        str(tmp_path / "data"),
        tokenizer="bpe",
        vocab_size=300,
        split="tail",
        progress=False,
    )
    train, val = split_docs(tmp_path / "data", "train"), split_docs(tmp_path / "data", "val")
    assert len(train) == len(val) == 1
    assert train[0] + val[0] == text
    assert text.endswith(val[0]) and train[0].endswith("\n") and val[0].startswith("Line ")
    total = len(text.encode())
    assert m["splits"]["val"]["bytes"] == len(val[0].encode())
    assert m["splits"]["train"]["bytes"] + m["splits"]["val"]["bytes"] == total
    assert abs(m["splits"]["val"]["bytes"] - 0.1 * total) <= max(len(line) for line in lines) + 1


def test_tail_split_of_many_documents_and_of_a_huge_document_in_pieces(tmp_path, monkeypatch, split_docs):
    monkeypatch.setattr(prep, "PIECE_CHARS", 64)
    monkeypatch.setattr(prep, "FLUSH_BYTES", 100)
    monkeypatch.setattr(prep, "ENCODE_BATCH_BYTES", 500)
    big = "\n".join((f"{i} " + "abc " * (i % 9)).rstrip() for i in range(600))
    small = make_docs(5)
    corpus = write_corpus(tmp_path / "c", [*small, big])
    m = prepare(
        [str(corpus)],
        str(tmp_path / "data"),
        tokenizer="char",
        split="tail",
        val_fraction=0.3,
        progress=False,
    )
    train, val = split_docs(tmp_path / "data", "train"), split_docs(tmp_path / "data", "val")
    # The big document (last file) straddles the boundary: it is cut once, without eos between its pieces.
    assert train[:5] == small and len(train) == 6 and len(val) == 1
    assert train[5] + val[0] == big and train[5].endswith("\n")
    assert m["splits"]["train"]["documents"] == 6 and m["splits"]["val"]["documents"] == 1
    assert m["sources"][-1] == {
        "path": str(corpus / "doc005.txt"),
        "documents": 1,
        "bytes": len(big.encode()),
    }
    # With doc splitting the big document stays whole in one split.
    prepare([str(corpus)], str(tmp_path / "d2"), tokenizer="char", val_fraction=0.5, progress=False)
    everything = split_docs(tmp_path / "d2", "train") + split_docs(tmp_path / "d2", "val")
    assert sorted(everything) == sorted([*small, big])


def test_exact_duplicates_are_removed_after_cleaning(tmp_path, monkeypatch, split_docs):
    # Tiny pieces and records, so that the big document is written in many records before it is
    # known to be a duplicate (and must be taken back).
    monkeypatch.setattr(prep, "PIECE_CHARS", 64)
    monkeypatch.setattr(prep, "FLUSH_BYTES", 100)
    docs = make_docs(30)
    big = "\n".join(f"line {i} of the long document" for i in range(300))
    corpus = write_corpus(tmp_path / "c", [*docs, big])
    (corpus / "copy1.txt").write_text(docs[0], encoding="utf-8")
    (corpus / "copy2.txt").write_text(
        docs[0].replace("\n", "   \r\n") + "\n\n\n", encoding="utf-8"
    )  # same once cleaned
    (corpus / "copy3.txt").write_text(big + "\n", encoding="utf-8")
    (corpus / "empty.txt").write_text(" \n\t\n", encoding="utf-8")
    m = prepare([str(corpus)], str(tmp_path / "a"), tokenizer="char", progress=False)
    assert m["removed"] == {"empty": 1, "duplicates": 3, "near_duplicates": 0}
    got = split_docs(tmp_path / "a", "train") + split_docs(tmp_path / "a", "val")
    assert sorted(got) == sorted([*docs, big])
    assert sum(m["splits"][s]["bytes"] for s in ("train", "val")) == sum(len(d.encode()) for d in got)
    assert not list(tmp_path.glob("a/*.records"))
    m = prepare([str(corpus)], str(tmp_path / "b"), tokenizer="char", dedup=False, progress=False)
    assert m["removed"]["duplicates"] == 0
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 34


def test_near_duplicates_are_removed_only_when_asked(tmp_path):
    rng = np.random.default_rng(3)
    vocab = [f"w{i}" for i in range(400)]
    docs = [" ".join(rng.choice(vocab, size=150)) for _ in range(40)]
    near = docs[0].split()
    near[75] = "changed"
    corpus = write_corpus(tmp_path / "c", [*docs, " ".join(near)])
    m = prepare([str(corpus)], str(tmp_path / "a"), tokenizer="char", near_dedup=0.8, progress=False)
    assert m["removed"] == {"empty": 0, "duplicates": 0, "near_duplicates": 1}
    m = prepare([str(corpus)], str(tmp_path / "b"), tokenizer="char", progress=False)
    assert m["removed"]["near_duplicates"] == 0


def test_cleaning_steps_in_the_pipeline(tmp_path, split_docs):
    docs = make_docs(40)
    corpus = write_corpus(tmp_path / "c", docs)
    (corpus / "page.html").write_text(
        "<html><head><script>var token = 'SECRET';</script><style>body{}</style></head>"
        "<body><h1>Web page</h1><p>Caf&eacute; text</p></body></html>",
        encoding="utf-8",
    )
    (corpus / "code.txt").write_text(
        "def f(x):\r\n    if x:\x0c\n        return cafe\u0301   \n\n\n\n\n\n# end\n", encoding="utf-8"
    )
    prepare([str(corpus)], str(tmp_path / "data"), tokenizer="char", val_fraction=0.5, progress=False)
    got = split_docs(tmp_path / "data", "train") + split_docs(tmp_path / "data", "val")
    assert "Web page\n\nCafé text" in got
    assert "def f(x):\n    if x:\n        return caf\u00e9\n\n\n# end" in got
    assert not any("SECRET" in d or "<" in d or "\r" in d for d in got)


def test_structured_and_stdin_inputs(tmp_path, monkeypatch, split_docs):
    docs = make_docs(40)
    (tmp_path / "a.jsonl").write_text(
        "".join(json.dumps({"body": d}) + "\n" for d in docs[:10]), encoding="utf-8"
    )
    lines = ["body"] + ['"' + d.replace('"', '""') + '"' for d in docs[10:20]]
    (tmp_path / "b.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"body": docs[20:30], "n": list(range(10))}), tmp_path / "c.parquet")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\n\n".join(docs[30:]).encode())))
    inputs = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.csv"), str(tmp_path / "c.parquet"), "-"]
    m = prepare(
        inputs,
        str(tmp_path / "data"),
        tokenizer="char",
        text_field="body",
        doc_split="paragraph",
        val_fraction=0.3,
        progress=False,
    )
    assert [(s["path"], s["documents"]) for s in m["sources"]] == [(p, 10) for p in inputs]
    got = split_docs(tmp_path / "data", "train") + split_docs(tmp_path / "data", "val")
    assert sorted(got) == sorted(docs)


def test_segmentation_and_stopwords(tmp_path, split_docs):
    sentences = [
        "我爱北京天安门",
        "今天的天气很好",
        "我们在学习自然语言处理",
        "他是一个学生",
        "这本书非常有意思",
    ]
    (tmp_path / "zh.txt").write_text("\n".join(sentences * 4) + "\n", encoding="utf-8")
    m = prepare(
        [str(tmp_path / "zh.txt")],
        str(tmp_path / "data"),
        tokenizer="char",
        doc_split="line",
        dedup=False,
        segment=True,
        stopwords="zh",
        val_fraction=0.5,
        progress=False,
    )
    got = split_docs(tmp_path / "data", "train") + split_docs(tmp_path / "data", "val")
    assert "爱 北京 天安门" in got and "今天 天气 好" in got
    assert all(" " in d and "的" not in d.split() and "我" not in d.split() for d in got)
    assert m["options"]["segment"] is True and m["options"]["stopwords"] == "zh"


def test_uint32_tokens_for_a_vocabulary_over_65536(tmp_path, split_ids, split_docs):
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 20_000)] + [
        chr(c) for c in range(0x20000, 0x20000 + 50_000)
    ]
    big = Tokenizer.train("char", ["".join(chars) + " 0123456789"])
    assert big.vocab_size > 65536
    big.save(tmp_path / "tok")
    docs = ["".join(chars[i::500][:60]) + f" {i}" for i in range(40)] + [chars[-1] * 3]
    corpus = write_corpus(tmp_path / "c", docs)
    m = prepare(
        [str(corpus)],
        str(tmp_path / "data"),
        tokenizer=str(tmp_path / "tok"),
        val_fraction=0.5,
        progress=False,
    )
    assert m["dtype"] == "uint32" and m["vocab_size"] == big.vocab_size
    assert m["tokenizer"]["trained"] is False and m["tokenizer"]["source"] == str(tmp_path / "tok")
    ids = np.concatenate([split_ids(tmp_path / "data", s) for s in ("train", "val")])
    assert ids.max() == big.token_to_id(chars[-1]) > 65535
    assert sorted(split_docs(tmp_path / "data", "train") + split_docs(tmp_path / "data", "val")) == sorted(
        docs
    )


def test_two_runs_are_byte_identical(tmp_path):
    corpus = write_corpus(tmp_path / "c", make_docs(50))
    runs = []
    for name in ("a", "b"):
        prepare([str(corpus)], str(tmp_path / name), tokenizer="bpe", vocab_size=300, progress=False)
        runs.append(tmp_path / name)
    files = sorted(p.relative_to(runs[0]) for p in runs[0].rglob("*") if p.is_file())
    assert sorted(p.relative_to(runs[1]) for p in runs[1].rglob("*") if p.is_file()) == files
    for rel in files:
        if rel.name == "manifest.json":
            a, b = (json.loads((r / rel).read_text()) for r in runs)
            a.pop("created"), b.pop("created")
            assert a == b
        else:
            assert (runs[0] / rel).read_bytes() == (runs[1] / rel).read_bytes(), rel


def test_a_failure_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "c", make_docs(30))

    def boom(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(prep._Encoder, "flush", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare([str(corpus)], str(tmp_path / "data"), tokenizer="char", progress=False)
    assert not (tmp_path / "data").exists() and leftovers(tmp_path) == []
    # An existing DATA_DIR survives a failed --overwrite run untouched.
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("precious", encoding="utf-8")
    with pytest.raises(RuntimeError):
        prepare([str(corpus)], str(old), tokenizer="char", overwrite=True, progress=False)
    assert [p.name for p in old.iterdir()] == ["keep.txt"] and leftovers(tmp_path) == []


def test_existing_output_needs_overwrite(tmp_path):
    corpus = write_corpus(tmp_path / "c", make_docs(30))
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("precious", encoding="utf-8")
    with pytest.raises(DataError, match="already exists and is not empty; pass --overwrite"):
        prepare([str(corpus)], str(out), tokenizer="char", progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    prepare([str(corpus)], str(out), tokenizer="char", overwrite=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "tokenizer.json", "train", "val"]
    assert leftovers(tmp_path) == []
    (tmp_path / "empty").mkdir()  # an empty folder is fine without --overwrite
    prepare([str(corpus)], str(tmp_path / "empty"), tokenizer="char", progress=False)
    # --overwrite never deletes an input.
    (out / "more.txt").write_text("inside the output", encoding="utf-8")
    with pytest.raises(DataError, match="which --overwrite would delete"):
        prepare(
            [str(out / "more.txt"), str(corpus)], str(out), tokenizer="char", overwrite=True, progress=False
        )


def _bad_input_cases(tmp: Path):
    good = write_corpus(tmp / "good", make_docs(30))
    (tmp / "blank.txt").write_text("  \n\n\t\n", encoding="utf-8")
    (tmp / "scripts.html").write_text("<script>only()</script>", encoding="utf-8")
    (tmp / "bin.dat").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp / "latin.txt").write_bytes("naïve\n".encode("latin-1"))
    (tmp / "one.txt").write_text("just one document\nwith two lines\n", encoding="utf-8")
    (tmp / "rec.jsonl").write_text('{"content": "x"}\n', encoding="utf-8")
    (tmp / "bad.json").write_text("{not json", encoding="utf-8")
    g = str(good)
    return {
        "missing": (dict(inputs=[str(tmp / "nope.txt")]), DataError, "not found"),
        "empty": (
            dict(inputs=[str(tmp / "blank.txt"), str(tmp / "scripts.html")]),
            DataError,
            "no text left after cleaning",
        ),
        "binary": (dict(inputs=[g, str(tmp / "bin.dat")]), DataError, r"bin\.dat looks like a binary file"),
        "undecodable": (
            dict(inputs=[str(tmp / "latin.txt")]),
            DataError,
            r"latin\.txt is not valid utf-8.*--encoding",
        ),
        "encoding": (dict(inputs=[g], encoding="nope-8"), DataError, "unknown encoding"),
        "single doc": (  # with an explicit per-document split (the default falls back to a tail split)
            dict(inputs=[str(tmp / "one.txt")], split="doc"),
            DataError,
            "split would be empty.*--split tail.*--doc-split paragraph",
        ),
        "val 0": (dict(inputs=[g], val_fraction=0.0), DataError, "strictly between 0 and 1"),
        "val 1": (dict(inputs=[g], val_fraction=1.0), DataError, "strictly between 0 and 1"),
        "tokenizer path": (
            dict(inputs=[g], tokenizer=str(tmp / "none.json")),
            TokenizerError,
            "neither a tokenizer kind",
        ),
        "tokenizer file": (
            dict(inputs=[g], tokenizer=str(tmp / "one.txt")),
            TokenizerError,
            "not a valid tokenizer.json",
        ),
        "field": (
            dict(inputs=[str(tmp / "rec.jsonl")]),
            DataError,
            r"no field 'text' \(its columns: content\)",
        ),
        "bad json": (dict(inputs=[str(tmp / "bad.json")]), DataError, r"cannot read .*bad\.json as JSON"),
        "stopwords": (dict(inputs=[g], stopwords="klingon"), DataError, "stopword list 'klingon' not found"),
        "split": (dict(inputs=[g], split="middle"), LmforgeError, "split must be one of auto, doc, tail"),
    }


CASE_NAMES = [
    "missing",
    "empty",
    "binary",
    "undecodable",
    "encoding",
    "single doc",
    "val 0",
    "val 1",
    "tokenizer path",
    "tokenizer file",
    "field",
    "bad json",
    "stopwords",
    "split",
]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_inputs_give_one_clear_error_and_no_output(tmp_path, case):
    kwargs, error, pattern = _bad_input_cases(tmp_path)[case]
    kwargs = {"tokenizer": "char", "progress": False, **kwargs}
    with pytest.raises(error, match=pattern) as info:
        prepare(out=str(tmp_path / "data"), **kwargs)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "data").exists() and leftovers(tmp_path) == []


def test_single_document_works_with_tail_split_or_paragraphs(tmp_path):
    text = "\n\n".join(f"Paragraph {i} about {WORDS[i % len(WORDS)]}." for i in range(50))
    (tmp_path / "one.txt").write_text(text, encoding="utf-8")
    m = prepare(
        [str(tmp_path / "one.txt")], str(tmp_path / "a"), tokenizer="char", split="tail", progress=False
    )
    assert m["splits"]["train"]["documents"] == m["splits"]["val"]["documents"] == 1
    m = prepare(
        [str(tmp_path / "one.txt")],
        str(tmp_path / "b"),
        tokenizer="char",
        doc_split="paragraph",
        progress=False,
    )
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 50


def test_no_progress_output_when_stderr_is_not_a_terminal(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c", make_docs(30))
    prepare([str(corpus)], str(tmp_path / "data"), tokenizer="char", progress=True)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_tokens_do_not_depend_on_how_a_long_document_is_cut(tmp_path, monkeypatch, split_ids, kind):
    rng = np.random.default_rng(5)
    lines = []
    for i in range(300):
        indent = " " * int(rng.integers(0, 3) * 4)
        lines.append(
            indent + "  ".join(rng.choice(WORDS, size=int(rng.integers(1, 9)))) + ("" if i % 7 else "\n")
        )
    big = "\n".join(lines)
    corpus = write_corpus(tmp_path / "c", [big, *make_docs(3)])
    tok = Tokenizer.train(kind, [big], vocab_size=300)
    tok.save(tmp_path / "tok")
    expected = tok.encode(big)
    ids = {}
    for name, small in [("whole", False), ("cut", True)]:
        if small:
            monkeypatch.setattr(prep, "PIECE_CHARS", 97)
            monkeypatch.setattr(prep, "FLUSH_BYTES", 50)
            monkeypatch.setattr(prep, "ENCODE_CHUNK_BYTES", 64)
            monkeypatch.setattr(prep, "ENCODE_BATCH_BYTES", 300)
        prepare(
            [str(corpus)],
            str(tmp_path / name),
            tokenizer=str(tmp_path / "tok"),
            split="tail",
            val_fraction=0.02,
            progress=False,
        )
        ids[name] = split_ids(tmp_path / name, "train").tolist()
    assert ids["cut"] == ids["whole"]
    assert ids["whole"][: len(expected) + 1] == [*expected, tok.eos_id]


def test_val_inputs_are_the_validation_split(tmp_path):
    from lmforge.data.prepare import prepare

    train = tmp_path / "train.txt"
    train.write_text("a b c\nb c d\na b c\n")
    valid = tmp_path / "valid.txt"
    valid.write_text("c d e\na b c\n")
    manifest = prepare(
        [str(train)],
        str(tmp_path / "d"),
        tokenizer="word",
        doc_split="line",
        dedup=False,
        val_inputs=[str(valid)],
        progress=False,
    )
    splits = manifest["splits"]
    assert (splits["train"]["documents"], splits["val"]["documents"]) == (3, 2)
    assert splits["val"]["bytes"] == len(
        "c d ea b c"
    )  # each line's text, its newline is the document boundary
    assert [s.get("val", False) for s in manifest["sources"]] == [False, True]
    from lmforge.errors import ConfigError

    with pytest.raises(ConfigError, match="--split tail"):
        prepare([str(train)], str(tmp_path / "e"), val_inputs=[str(valid)], split="tail", progress=False)
