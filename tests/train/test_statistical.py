"""`--arch ngram` goes through the same pretrain / checkpoint / evaluate / generate / info path as the GPT."""

import json
import math

import numpy as np
import pytest

import lmforge
from lmforge.cli.main import main
from lmforge.data.shards import TokenShards
from lmforge.errors import ConfigError


@pytest.fixture(scope="module")
def ngram_run(char_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("ngram") / "run"
    result = lmforge.pretrain(char_data, run, arch="ngram", overrides={"model.order": 4}, progress=False)
    return run, result


def test_fit_saves_a_checkpoint_that_loads_evaluates_and_generates(ngram_run, char_data):
    run, result = ngram_run
    assert result.stop_reason == "fitted" and (run / "latest" / "model.safetensors").is_file()
    lm = lmforge.load(run)
    figures = lm.evaluate(char_data)
    assert figures["loss"] == pytest.approx(result.metrics["val_loss"])
    # The same figure by hand: the model's own stream scorer over the validation tokens.
    val = TokenShards(char_data, "val")
    nats, count = lm.model.lm.score(np.concatenate([np.asarray(a) for a in val.arrays]))
    assert figures["loss"] == pytest.approx(nats / count) and count == val.tokens
    text = lm.generate("alice ", max_new_tokens=30, temperature=0)
    assert text and text == lm.generate("alice ", max_new_tokens=30, temperature=0)


def test_ngram_beats_the_unigram_baseline_and_window_scoring_agrees(ngram_run, char_data):
    from lmforge.eval.baseline import unigram_baseline

    run, result = ngram_run
    assert result.metrics["val_loss"] < unigram_baseline(char_data)["loss"] - 1.0
    lm = lmforge.load(run)
    # forward() gives log-probabilities that sum to 1 at every position.
    x = np.asarray(TokenShards(char_data, "val").arrays[0][:20], dtype=np.int64)[None]
    import torch

    logp = lm.model(torch.from_numpy(x))
    assert torch.allclose(logp.exp().sum(-1), torch.ones(1, 20), atol=1e-5)


def test_ngram_cli_and_errors(ngram_run, char_data, tmp_path, capsys):
    run, _ = ngram_run
    assert main(["info", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["arch"] == "ngram" and info["params"] > 0 and info["model"]["order"] == 4
    assert main(["evaluate", str(run), "--data", str(char_data), "--json"]) == 0
    assert math.isfinite(json.loads(capsys.readouterr().out)["perplexity"])
    code = main(
        [
            "pretrain",
            "--data",
            str(char_data),
            "--out",
            str(tmp_path / "r"),
            "--arch",
            "ngram",
            "--model.order",
            "0",
        ]
    )
    assert code == 2 and "model.order must be >= 1" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="nothing to resume"):
        lmforge.pretrain(char_data, run, resume=True, progress=False)


def test_word_level_ngram_from_prepare_to_generate(corpus_dir, tmp_path):
    data = tmp_path / "words"
    manifest = lmforge.prepare(
        [str(corpus_dir)], str(data), tokenizer="word", doc_split="line", progress=False
    )
    assert manifest["tokenizer"]["kind"] == "word"
    lmforge.pretrain(data, tmp_path / "run", arch="ngram", overrides={"model.order": 3}, progress=False)
    lm = lmforge.load(tmp_path / "run")
    completion = lm.generate("alice sees", max_new_tokens=4, temperature=0)
    assert completion.startswith(" ") and len(completion.split()) == 4  # words, spaced after the prompt
    assert lm.evaluate(data)["perplexity"] < 20  # the synthetic sentences are very regular


def test_arpa_export_and_import_keep_the_scores(ngram_run, char_data, corpus_dir, tmp_path, capsys):
    data = tmp_path / "words"
    lmforge.prepare([str(corpus_dir)], str(data), tokenizer="word", doc_split="line", progress=False)
    lmforge.pretrain(data, tmp_path / "run", arch="ngram", overrides={"model.order": 3}, progress=False)
    arpa = tmp_path / "m.arpa"
    assert main(["export-arpa", str(tmp_path / "run"), str(arpa)]) == 0
    assert arpa.read_text().lstrip().splitlines()[0].startswith(("#", "\\data\\"))
    assert main(["import-arpa", str(arpa), "--out", str(tmp_path / "imported")]) == 0
    capsys.readouterr()
    original = lmforge.load(tmp_path / "run")
    imported = lmforge.load(tmp_path / "imported")
    text = tmp_path / "t.txt"
    text.write_text("alice sees bob at 3 o'clock.\ncarol meets zed at 9 o'clock.\n")
    assert imported.evaluate(text)["loss"] == pytest.approx(original.evaluate(text)["loss"], abs=1e-4)
    # Character-level models export too: whitespace characters get code-point names.
    run, _ = ngram_run
    assert main(["export-arpa", str(run), str(tmp_path / "char.arpa")]) == 0
    assert "<U+0020>" in (tmp_path / "char.arpa").read_text()
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-0.5\t</s>\n")
    assert main(["import-arpa", str(bad), "--out", str(tmp_path / "bad")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
