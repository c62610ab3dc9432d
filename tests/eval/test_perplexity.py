import math

import numpy as np
import pytest

import lmforge
from lmforge.data.shards import TokenShards
from lmforge.errors import DataError, TokenizerError
from lmforge.eval.baseline import unigram_baseline
from lmforge.eval.perplexity import evaluate, summarize


@pytest.fixture(scope="module")
def run(char_data, tmp_path_factory):
    from tests.conftest import TINY

    out = tmp_path_factory.mktemp("eval") / "run"
    lmforge.pretrain(char_data, out, overrides=TINY, max_steps=40, progress=False)
    return out


def test_summary_relations():
    s = summarize(nats=1000.0, tokens=500, n_bytes=2000)
    assert s["loss"] == 2.0
    assert s["perplexity"] == pytest.approx(math.exp(2.0))
    assert s["bits_per_byte"] == pytest.approx(1000 / math.log(2) / 2000)


def test_unigram_baseline_matches_a_hand_computation(char_data):
    train, val = TokenShards(char_data, "train"), TokenShards(char_data, "val")
    vocab = train.manifest["vocab_size"]
    counts = np.bincount(np.concatenate([np.asarray(a) for a in train.arrays]), minlength=vocab)
    p = (counts + 1) / (counts.sum() + vocab)
    v = np.concatenate([np.asarray(a) for a in val.arrays])
    expected = -np.log(p[v]).mean()
    got = unigram_baseline(char_data)
    assert got["loss"] == pytest.approx(expected, rel=1e-9)
    assert got["tokens"] == v.size


def test_evaluate_on_shards_and_on_a_text_file(run, char_data, tmp_path):
    on_val = evaluate(run, char_data)
    val = TokenShards(char_data, "val")
    assert on_val["tokens"] == val.tokens - 1  # the first token has no context
    # Char tokenizer on ASCII text: one token per byte, plus one end-of-sequence token (no bytes) per document.
    assert val.bytes == val.tokens - val.manifest["splits"]["val"]["documents"]
    assert on_val["bits_per_byte"] == pytest.approx(on_val["loss"] / math.log(2) * val.tokens / val.bytes)
    text = "alice sees bob at 3 o'clock.\ncarol meets dave at 5 o'clock.\n"
    f = tmp_path / "t.txt"
    f.write_text(text)
    on_text = evaluate(run, f)
    # Read as the run's data was prepared: cleaned (the final newline goes), one document ended by eos.
    assert on_text["tokens"] == len(text) and on_text["bytes"] == len(text) - 1
    as_is = evaluate(run, f, doc_split="none")  # the text as it is: every character, no eos
    assert as_is["tokens"] == len(text) and as_is["bytes"] == len(text)
    assert on_text["bits_per_byte"] * on_text["bytes"] * math.log(2) == pytest.approx(
        on_text["loss"] * len(text)
    )
    limited = evaluate(run, char_data, max_tokens=100)
    assert limited["tokens"] == 100


def test_evaluate_bad_inputs(run, tmp_path, corpus_dir):
    with pytest.raises(DataError, match="does not exist"):
        evaluate(run, tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        evaluate(run, empty)
    other = tmp_path / "other"
    lmforge.prepare([str(corpus_dir)], str(other), tokenizer="bpe", vocab_size=300, progress=False)
    with pytest.raises(TokenizerError, match="different tokenizer"):
        evaluate(run, other)
