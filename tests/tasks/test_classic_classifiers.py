"""The classic classifiers: TF-IDF + logistic regression / linear SVM (scikit-learn, saved without pickle) and Kim's
CNN; word vectors for the embedding layer (--vectors, --freeze-vectors); Snowball stemming (--stem). Each trains,
saves, loads, predicts, serves and evaluates like any other classifier."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import lmforge
from lmforge.checkpoint import load_checkpoint
from lmforge.cli.main import main
from lmforge.errors import ConfigError, DataError
from lmforge.serve import create_app
from lmforge.tasks.classify.classic import ClassicOptions
from lmforge.tasks.classify.examples import read_examples
from lmforge.tasks.classify.pipeline import TextClassificationPipeline, evaluate_classifier
from lmforge.tasks.classify.tfidf import fit_linear
from lmforge.tasks.classify.tfidf_features import TfidfEncoder, analyze_pair
from tests.tasks.test_classify import FIELDS, sentiment  # noqa: F401 (a fixture)

pytest.importorskip("gensim")
pytest.importorskip("sklearn")
QUIET = {"progress": False}
SMALL_CNN = {"model.encoder": {"n_filters": 8}}


def fit(tmp_path, sentiment, name="tfidf", **classic):  # noqa: F811
    return lmforge.finetune(
        "classify",
        "tfidf",
        sentiment / "train.tsv",
        tmp_path / name,
        dev=sentiment / "dev.tsv",
        fields=FIELDS,
        classic=ClassicOptions(**classic),
        **QUIET,
    )


@pytest.fixture(scope="module")
def vectors_file(tmp_path_factory):
    """8-dimensional GloVe-format vectors for some words of the reviews (two of them upper-cased)."""
    path = tmp_path_factory.mktemp("vectors") / "v.txt"
    rng = np.random.default_rng(0)
    words = ["GOOD", "bad", "Film", "the", "plot", "music", "dragon"]
    path.write_text("".join(f"{w} {' '.join(f'{x:.4f}' for x in rng.normal(size=8))}\n" for w in words))
    return path


def test_tfidf_learns_and_equals_scikit_learn(tmp_path, sentiment):  # noqa: F811
    result = fit(tmp_path, sentiment)
    assert result.stop_reason == "fitted" and result.metrics["val_accuracy"] >= 0.95
    ckpt = tmp_path / "tfidf" / "best"
    files = sorted(p.name for p in ckpt.resolve().iterdir())
    assert files == [
        "README.md",
        "config.json",
        "metrics.jsonl",
        "model.safetensors",
        "tokenizer.json",
    ]  # no pickle
    model, tokenizer, config = load_checkpoint(ckpt)
    assert config["arch"] == "tfidf" and model.config.word_ngrams == [1, 2]
    # the rebuilt torch module gives scikit-learn's own probabilities
    train = read_examples(sentiment / "train.tsv", FIELDS)
    dev = read_examples(sentiment / "dev.tsv", FIELDS)
    labels = model.config.labels
    y = np.array([labels.index(ex.labels[0]) for ex in train])
    vectorizer, clf = fit_linear(
        [analyze_pair(ex.text, None, model.config) for ex in train], y, model.config, 1
    )
    expected = clf.predict_proba(
        vectorizer.transform([analyze_pair(ex.text, None, model.config) for ex in dev])
    )
    clf_pipe = TextClassificationPipeline(ckpt)
    got = clf_pipe.probabilities(dev).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # predict, evaluate and the CLI
    assert clf_pipe("the film was superb")["label"] == "pos"
    scores = evaluate_classifier(ckpt, sentiment / "dev.tsv")
    assert scores["accuracy"] == pytest.approx(result.metrics["val_accuracy"])
    assert lmforge.pipeline("sentiment-analysis", ckpt)("an awful plot")["label"] == "neg"


def test_tfidf_svm_char_ngrams_and_stems(tmp_path, sentiment):  # noqa: F811
    result = fit(tmp_path, sentiment, "svm", classifier="svm", char_ngrams=True, stem="en")
    assert result.metrics["val_accuracy"] >= 0.9
    clf = TextClassificationPipeline(tmp_path / "svm")
    cfg = clf.lm.model.config
    assert cfg.classifier == "svm" and cfg.char_ngrams == [2, 5] and cfg.stem == "english"
    vocab = clf.encoder.vocab
    assert "w:bore" in vocab and "w:boring" not in vocab  # Snowball stems ("boring" -> "bore")
    assert "c: goo" in vocab
    # an inflection never seen in training reads as its stem
    assert clf("the films were great")["label"] == clf("the film was great")["label"] == "pos"


def test_tfidf_serves_classify(tmp_path, sentiment):  # noqa: F811
    fit(tmp_path, sentiment)
    ckpt = tmp_path / "tfidf" / "best"
    expected = TextClassificationPipeline(ckpt)(["the plot was dull", "lovely music"])
    with TestClient(create_app(str(ckpt), api_key="")) as client:
        response = client.post("/v1/classify", json={"input": ["the plot was dull", "lovely music"]})
        assert response.status_code == 200, response.text
        data = response.json()["data"]
    assert [d["label"] for d in data] == [e["label"] for e in expected] == ["neg", "pos"]
    # no attention and no embeddings to attribute through: one line, not a traceback
    assert main(["explain", str(ckpt), "--text", "lovely music"]) == 2


def test_tfidf_encoder_counts_features(tmp_path, sentiment):  # noqa: F811
    fit(tmp_path, sentiment)
    model, tokenizer, _ = load_checkpoint(tmp_path / "tfidf" / "best")
    encoder = TfidfEncoder(tokenizer, model.config)
    ids, counts = encoder("good good film zzzunknown")
    names = {tokenizer.id_to_token(i): c for i, c in zip(ids, counts)}
    assert names["w:good"] == 2.0 and names["w:film"] == 1.0  # raw counts; TF-IDF weighting is the model's
    assert set(names) <= {"w:good", "w:film", "w:good film"}  # unseen words and n-grams have no feature


def test_cnn_trains_saves_predicts_serves_and_evaluates(tmp_path, sentiment):  # noqa: F811
    result = lmforge.finetune(
        "classify",
        "cnn",
        sentiment / "train.tsv",
        tmp_path / "cnn",
        dev=sentiment / "dev.tsv",
        fields=FIELDS,
        epochs=3,
        batch_size=16,
        lr=1e-2,
        overrides={"model.encoder": {"n_embd": 16, "n_filters": 8}, "train.threads": 1},
        **QUIET,
    )
    assert result.metrics["val_accuracy"] >= 0.9
    model, _, config = load_checkpoint(result.best)
    assert config["model"]["backbone"] == "cnn" and model.config.dropout == 0.5
    assert [c.kernel_size[0] for c in model.backbone.convs] == [3, 4, 5]
    clf = TextClassificationPipeline(result.best)
    assert clf("a superb story")["label"] == "pos"
    scores = evaluate_classifier(result.best, sentiment / "dev.tsv")
    assert scores["accuracy"] == pytest.approx(result.metrics["val_accuracy"])
    # padding never changes a text's prediction (masked out of the max-over-time)
    one = clf.probabilities(read_examples(sentiment / "dev.tsv", FIELDS)[:1])
    batch = clf.probabilities(read_examples(sentiment / "dev.tsv", FIELDS)[:8])
    torch.testing.assert_close(one[0], batch[0])
    with TestClient(create_app(str(result.best), api_key="")) as client:
        response = client.post("/v1/classify", json={"input": "a superb story"})
        assert response.status_code == 200 and response.json()["data"][0]["label"] == "pos"


@pytest.mark.parametrize("freeze", [True, False])
def test_vectors_initialise_the_embedding_rows(freeze, tmp_path, sentiment, vectors_file, capsys):  # noqa: F811
    result = lmforge.finetune(
        "classify",
        "cnn",
        sentiment / "train.tsv",
        tmp_path / "run",
        fields=FIELDS,
        epochs=1,
        batch_size=64,
        lr=1e-3 if freeze else 1e-9,  # unfrozen: a step too small to move them
        overrides=SMALL_CNN,
        classic=ClassicOptions(vectors=str(vectors_file), freeze_vectors=freeze),
        progress=True,
    )
    assert "vocabulary words found in" in capsys.readouterr().out
    model, tok, config = load_checkpoint(result.latest)
    assert model.backbone.config.n_embd == 8  # the model took the vectors' size
    assert config["data"]["vectors"] == {"file": str(vectors_file), "frozen": freeze}
    rows = {
        line.split()[0]: [float(x) for x in line.split()[1:]]
        for line in vectors_file.read_text().splitlines()
    }
    emb = model.backbone.tok_emb.weight.detach()
    for word, vector in (("good", rows["GOOD"]), ("film", rows["Film"]), ("the", rows["the"])):
        got = emb[tok.token_to_id(word)]
        torch.testing.assert_close(got, torch.tensor(vector), atol=1e-6 if freeze else 1e-5, rtol=0)
    assert not torch.allclose(emb[tok.token_to_id("great")], torch.zeros(8))  # not found: random start kept


def test_vectors_for_an_lstm_and_the_dimension_check(tmp_path, sentiment, vectors_file):  # noqa: F811
    args = dict(fields=FIELDS, epochs=0.1, classic=ClassicOptions(vectors=str(vectors_file)), **QUIET)
    result = lmforge.finetune("classify", "lstm", sentiment / "train.tsv", tmp_path / "lstm", **args)
    model, _, _ = load_checkpoint(result.latest)
    assert model.backbone.tok_emb.weight.shape[1] == 8
    with pytest.raises(ConfigError, match="8-dimensional vectors but the model's embeddings are 16"):
        lmforge.finetune(
            "classify",
            "cnn",
            sentiment / "train.tsv",
            tmp_path / "mismatch",
            overrides={"model.encoder": {"n_embd": 16}},
            **args,
        )


def test_bad_classic_options_are_one_line_errors(tmp_path, sentiment, vectors_file, capsys):  # noqa: F811
    train = sentiment / "train.tsv"
    with pytest.raises(ConfigError, match="needs --vectors"):
        lmforge.finetune(
            "classify", "cnn", train, tmp_path / "a", classic=ClassicOptions(freeze_vectors=True)
        )
    with pytest.raises(ConfigError, match="no Snowball stemmer"):
        lmforge.finetune("classify", "tfidf", train, tmp_path / "b", classic=ClassicOptions(stem="klingon"))
    with pytest.raises(ConfigError, match="fitted in one pass"):
        lmforge.finetune("classify", "tfidf", train, tmp_path / "c", folds=3, fields=FIELDS)
    with pytest.raises(DataError, match="does not exist"):
        lmforge.finetune(
            "classify",
            "lstm",
            train,
            tmp_path / "d",
            fields=FIELDS,
            classic=ClassicOptions(vectors="nope.vec"),
        )
    with pytest.raises(ConfigError, match="for classify and nli"):
        lmforge.finetune("ner", "lstm", train, tmp_path / "e", classic=ClassicOptions(stem="en"))
    with pytest.raises(ConfigError, match="text classifier"):
        lmforge.finetune("ner", "cnn", train, tmp_path / "e")
    base = ["finetune", "--task", "classify", "--train", str(train), "--text-field", "sentence", "--quiet"]
    assert (
        main([*base, "--model", "tfidf", "--out", str(tmp_path / "f"), "--vectors", str(vectors_file)]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: --vectors starts the embeddings") and len(err.strip().splitlines()) == 1
    assert (
        main([*base, "--model", "tfidf", "--out", str(tmp_path / "g"), "--classic-clf", "svm", "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["stop_reason"] == "fitted"


def test_prepare_warns_that_stopword_removal_deletes_what_a_language_model_predicts(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("The cat sat on the mat and it was happy.\n" * 20, encoding="utf-8")
    args = ["prepare", str(text), "--tokenizer", "char", "--no-dedup", "--val-fraction", "0.1"]
    assert main([*args, "--out", str(tmp_path / "a"), "--stopwords", "en"]) == 0
    warning = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning: --stopwords")]
    assert len(warning) == 1 and "language model" in warning[0]
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert "warning: --stopwords" not in capsys.readouterr().err


def test_stemmed_recurrent_classifier_reads_stems_at_training_and_prediction(tmp_path, sentiment):  # noqa: F811
    result = lmforge.finetune(
        "classify",
        "gru",
        sentiment / "train.tsv",
        tmp_path / "gru",
        fields=FIELDS,
        epochs=0.1,
        overrides={"train.threads": 1},
        classic=ClassicOptions(stem="english"),
        **QUIET,
    )
    clf = TextClassificationPipeline(result.latest)
    assert clf.lm.model.config.stem == "english"
    tok = clf.lm.tokenizer
    assert tok.token_to_id("bore") is not None and tok.token_to_id("boring") is None
    assert clf.encoder("boring films")[0] == clf.encoder("bore film")[0]


def test_tfidf_reads_text_pairs_for_nli(tmp_path):
    rows = ["premise\thypothesis\tlabel"]
    for i in range(60):
        good = i % 2 == 0
        rows.append(
            f"the film was {'great' if good else 'dull'}\tit was {'fun' if good else 'boring'}\t{int(good)}"
        )
    (tmp_path / "nli.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    fields = dataclasses.replace(FIELDS, text="premise", pair="hypothesis")
    result = lmforge.finetune("nli", "tfidf", tmp_path / "nli.tsv", tmp_path / "run", fields=fields, **QUIET)
    clf = TextClassificationPipeline(result.best)
    assert "2w:fun" in clf.encoder.vocab and "w:fun" not in clf.encoder.vocab  # the pair's own features
    assert clf({"text": "the film was dull", "text_pair": "it was boring"})["label"] == "0"
    with pytest.raises(ConfigError, match="pairs"):
        clf("the film was great")
