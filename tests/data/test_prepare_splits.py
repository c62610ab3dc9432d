"""Splits of `prepare`: the automatic tail split of a single document, and the test split (--test-fraction)."""

from __future__ import annotations

import json

import pytest

import lmforge.cli.main as cli_main
from lmforge.data.prepare import prepare
from lmforge.errors import DataError, EmptySplitError

LINES = [f"line {i}: the {'quick' if i % 3 else 'lazy'} fox number {i} jumps." for i in range(400)]


@pytest.fixture
def one_file(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def only_prepare(monkeypatch):
    # Build the parser from this verb alone, so these tests do not depend on the other verbs' modules.
    monkeypatch.setattr(cli_main, "VERB_MODULES", ["prepare"])


def test_one_text_file_prepares_with_no_flag_holding_out_its_end(tmp_path, one_file, only_prepare, capsys):
    out = tmp_path / "data"
    assert cli_main.main(["prepare", str(one_file), "--out", str(out), "--tokenizer", "char"]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "single document" in notes[0] and "--split tail" in notes[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["split"] == "tail"
    splits = manifest["splits"]
    assert splits["val"]["bytes"] == pytest.approx(
        0.1 * (splits["train"]["bytes"] + splits["val"]["bytes"]), rel=0.05
    )


def test_the_fallback_gives_what_an_explicit_tail_split_gives(tmp_path, one_file, split_docs):
    auto = prepare([str(one_file)], tmp_path / "auto", tokenizer="char", progress=False)
    tail = prepare([str(one_file)], tmp_path / "tail", tokenizer="char", split="tail", progress=False)
    assert auto["splits"] == tail["splits"]
    assert split_docs(tmp_path / "auto", "val") == split_docs(tmp_path / "tail", "val")


def test_an_explicit_doc_split_keeps_refusing_a_single_document(tmp_path, one_file):
    with pytest.raises(EmptySplitError, match="single document.*--split tail"):
        prepare([str(one_file)], tmp_path / "d", tokenizer="char", split="doc", progress=False)


def test_test_fraction_by_document_keeps_the_val_documents(tmp_path, one_file, split_docs):
    base = dict(tokenizer="char", doc_split="line", progress=False, seed=3)
    two = prepare([str(one_file)], tmp_path / "two", **base)
    three = prepare([str(one_file)], tmp_path / "three", test_fraction=0.25, **base)
    assert set(three["splits"]) == {"train", "val", "test"} and "test" not in two["splits"]
    assert three["options"]["test_fraction"] == 0.25 and three["options"]["split"] == "doc"
    val2, val3 = split_docs(tmp_path / "two", "val"), split_docs(tmp_path / "three", "val")
    test, train = split_docs(tmp_path / "three", "test"), split_docs(tmp_path / "three", "train")
    assert val3 == val2  # a document's split depends on (seed, text) only: val unchanged by a test split
    assert sorted(val3 + test + train) == sorted(LINES)  # every line once, in exactly one split
    assert 0.15 < len(test) / len(LINES) < 0.35
    prepare([str(one_file)], tmp_path / "again", test_fraction=0.25, **base)
    assert split_docs(tmp_path / "again", "test") == test  # deterministic


def test_test_fraction_on_a_tail_split_holds_out_val_then_test(tmp_path, one_file, split_docs):
    m = prepare([str(one_file)], tmp_path / "d", tokenizer="char", test_fraction=0.2, progress=False)
    assert m["options"]["split"] == "tail"
    train, val, test = (split_docs(tmp_path / "d", s)[0] for s in ("train", "val", "test"))
    assert train + val + test == "\n".join(LINES)  # the text in order, cut at line breaks
    assert val.startswith("line ") and test.startswith("line ")
    total = len(train) + len(val) + len(test)
    assert len(val) == pytest.approx(0.1 * total, rel=0.1) and len(test) == pytest.approx(
        0.2 * total, rel=0.1
    )


def test_test_split_of_given_val_files(tmp_path, one_file, split_docs):
    dev = tmp_path / "dev.txt"
    dev.write_text("a dev line.\nanother dev line.\n", encoding="utf-8")
    prepare(
        [str(one_file)], tmp_path / "d", tokenizer="char", doc_split="line", val_inputs=[str(dev)],
        test_fraction=0.2, progress=False,
    )  # fmt: skip
    assert split_docs(tmp_path / "d", "val") == ["a dev line.", "another dev line."]
    test, train = split_docs(tmp_path / "d", "test"), split_docs(tmp_path / "d", "train")
    assert sorted(test + train) == sorted(LINES) and 0.1 < len(test) / len(LINES) < 0.3


@pytest.mark.parametrize(
    "options, message",
    [
        ({"test_fraction": 1.0}, "test_fraction must be at least 0 and below 1"),
        ({"test_fraction": -0.1}, "test_fraction must be at least 0 and below 1"),
        ({"test_fraction": 0.5, "val_fraction": 0.5}, "sum must be below 1"),
        ({"test_fraction": 0.6, "val_fraction": 0.45}, "sum must be below 1"),
    ],
)
def test_bad_test_fractions_are_refused_in_one_line(tmp_path, one_file, options, message):
    with pytest.raises(DataError, match=message) as info:
        prepare([str(one_file)], tmp_path / "d", tokenizer="char", progress=False, **options)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "d").exists()


def test_cli_test_fraction_and_refusal(tmp_path, one_file, only_prepare, capsys):
    out = tmp_path / "data"
    argv = ["prepare", str(one_file), "--out", str(out), "--tokenizer", "char", "--doc-split", "line"]
    assert cli_main.main([*argv, "--test-fraction", "0.1", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["splits"]["test"]["documents"] > 0
    assert cli_main.main([*argv, "--test-fraction", "0.95", "--overwrite"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sum must be below 1" in err
