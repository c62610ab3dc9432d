"""`evaluate --data FILE.txt` reads a text file the way the run's training data was prepared (its document
splitting, cleaning and one end-of-sequence token per document), so a file scores as it does once prepared."""

from __future__ import annotations

import json

import pytest

import lmforge
import lmforge.cli.main as cli_main
from lmforge.checkpoint import read_config, resolve_checkpoint
from lmforge.errors import ConfigError
from lmforge.eval.perplexity import evaluate
from tests.conftest import TINY, make_text

TEST_TEXT = (
    "alice sees bob at 3 o'clock.\ncarol meets dave at 5 o'clock.\n\nbob  calls erin at 9 o'clock.  \n"
)


@pytest.fixture(scope="module")
def words(corpus_dir, tmp_path_factory):
    """Word-level data with one document (and one eos) per line, as the PTB recipe prepares it."""
    root = tmp_path_factory.mktemp("conv")
    data = root / "data"
    lmforge.prepare(
        [str(corpus_dir)], str(data), tokenizer="word", doc_split="line", dedup=False, progress=False
    )
    test = root / "test.txt"
    test.write_text(TEST_TEXT + "".join(make_text(3, seed=7)), encoding="utf-8")
    # The same file prepared as a validation split, with the run's tokenizer.
    prepared = root / "prepared"
    lmforge.prepare(
        [str(corpus_dir)], str(prepared), tokenizer=str(data / "tokenizer.json"), doc_split="line",
        dedup=False, val_inputs=[str(test)], progress=False,
    )  # fmt: skip
    return data, test, prepared


@pytest.fixture(scope="module")
def ngram(words, tmp_path_factory):
    run = tmp_path_factory.mktemp("ngram") / "run"
    lmforge.pretrain(words[0], run, arch="ngram", overrides={"model.order": 3}, progress=False)
    return run


def test_the_run_records_how_its_data_was_prepared(ngram, words):
    data_info = read_config(resolve_checkpoint(ngram))["data"]
    assert data_info["text"]["doc_split"] == "line" and data_info["text"]["eos_after"] == "document"
    manifest = json.loads((words[0] / "manifest.json").read_text())
    assert manifest["eos_after"] == "document" and manifest["options"]["doc_split"] == "line"


def test_an_ngram_scores_a_text_file_as_the_same_file_prepared(ngram, words):
    _, test, prepared = words
    on_text, on_prepared = evaluate(ngram, test), evaluate(ngram, prepared)
    assert on_text["tokens"] == on_prepared["tokens"]  # one eos per non-empty line, the blank line dropped
    assert on_text["loss"] == pytest.approx(on_prepared["loss"], rel=1e-9)
    assert on_text["bytes"] == on_prepared["bytes"]
    # The old reading (the text as it is, no eos inside) scores different tokens: fewer of them.
    as_is = evaluate(ngram, test, doc_split="none")
    assert as_is["tokens"] < on_text["tokens"] and as_is["loss"] != pytest.approx(on_text["loss"])
    # An explicit document splitting overrides the recorded one.
    whole = evaluate(ngram, test, doc_split="file")
    assert whole["tokens"] == as_is["tokens"] + 1  # one document: one eos at its end


def prepared_bytes(words) -> int:
    """The cleaned UTF-8 bytes of the test file's documents, as its prepared split counts them."""
    return json.loads((words[2] / "manifest.json").read_text())["splits"]["val"]["bytes"]


def test_a_gpt_scores_a_text_file_as_the_same_file_prepared(words, tmp_path):
    data, test, prepared = words
    run = tmp_path / "gpt"
    lmforge.pretrain(data, run, overrides={**TINY, "train.eval_every": 100}, max_steps=6, progress=False)
    on_text, on_prepared = evaluate(run, test), evaluate(run, prepared)
    # The same stream; a text file also scores its first token (from an eos before it), a split cannot.
    assert on_text["tokens"] == on_prepared["tokens"] + 1
    n = on_prepared["tokens"]
    assert on_text["bytes"] == prepared_bytes(words) and on_prepared["bytes"] == round(
        on_text["bytes"] * n / (n + 1)
    )
    assert on_text["loss"] * (n + 1) == pytest.approx(on_prepared["loss"] * n, rel=0.02)


def test_a_run_without_recorded_data_reads_its_data_directory_manifest(ngram, words, tmp_path):
    from lmforge.eval.perplexity import text_convention_of

    class Old:  # a checkpoint written before the convention was recorded
        config = {"data": {"dir": str(words[0]), "manifest_tokens": 1}}
        model = None

    assert text_convention_of(Old())["doc_split"] == "line"
    Old.config = {"data": {"dir": str(tmp_path / "gone")}}
    assert text_convention_of(Old()) is None
    assert text_convention_of(Old(), doc_split="paragraph")["doc_split"] == "paragraph"
    with pytest.raises(ConfigError, match="doc_split must be one of"):
        text_convention_of(Old(), doc_split="sentence")
    with pytest.raises(ConfigError, match="is a data directory, prepared already"):
        evaluate(ngram, words[0], doc_split="line")


def test_cli_evaluate_doc_split_and_test_split(ngram, words, tmp_path, corpus_dir, monkeypatch, capsys):
    monkeypatch.setattr(cli_main, "VERB_MODULES", ["prepare", "evaluate"])
    _, test, prepared = words

    def run(*argv) -> dict:
        assert cli_main.main(["evaluate", str(ngram), *argv, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    assert run("--data", str(test))["loss"] == pytest.approx(run("--data", str(prepared))["loss"])
    assert run("--data", str(test), "--doc-split", "none")["tokens"] < run("--data", str(test))["tokens"]
    # A test split, prepared with --test-fraction and the run's tokenizer, scored by --split test.
    data = tmp_path / "with-test"
    argv = ["prepare", str(corpus_dir), "--out", str(data), "--tokenizer", str(words[0] / "tokenizer.json")]
    assert cli_main.main([*argv, "--doc-split", "line", "--no-dedup", "--test-fraction", "0.2"]) == 0
    capsys.readouterr()
    on_test = run("--data", str(data), "--split", "test")
    manifest = json.loads((data / "manifest.json").read_text())
    assert on_test["tokens"] == manifest["splits"]["test"]["tokens"]
    assert evaluate(ngram, data, split="test") == on_test
    assert lmforge.load(ngram).evaluate(data, split="test") == on_test  # the LM method takes the same options
    assert (
        cli_main.main(["evaluate", str(ngram), "--data", str(test), "--task", "ner", "--doc-split", "line"])
        != 0
    )
    assert "--doc-split reads text files for --task lm" in capsys.readouterr().err
