"""lmforge explain: exact attention maps of every Transformer family, IG and Shapley attributions, reports, CLI."""

import dataclasses
import json
import random

import pytest
import torch

import lmforge
from lmforge.checkpoint import save_checkpoint
from lmforge.cli.main import main
from lmforge.errors import ConfigError
from lmforge.explain import attentions, explain, write_report
from lmforge.models.registry import build_model
from lmforge.tasks.classify.examples import Fields
from lmforge.tokenizers import Tokenizer
from tests.tasks.test_ner import write_conll
from tests.tasks.test_qa import QUESTION, squad

# One word decides the label ("superb": pos, "awful": neg, neither: none); the rest is filler from one pool. The
# third label matters: with two, a model may learn only "awful or not", and "superb" would rightly get nothing.
FILL = ["the", "film", "was", "a", "plot", "really", "quite", "story", "acting", "and", "music", "it"]
KEYS = {"pos": ["superb"], "neg": ["awful"], "none": []}


def rows(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.choice(list(KEYS))
        words = rng.sample(FILL, 6 - len(KEYS[label])) + KEYS[label]
        rng.shuffle(words)
        out.append(f"{' '.join(words)}\t{label}")
    return out


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A tiny BERT-style classifier fine-tuned where "superb" means pos and "awful" neg."""
    folder = tmp_path_factory.mktemp("explain")
    for name, n, seed in (("train.tsv", 400, 0), ("dev.tsv", 80, 1)):
        (folder / name).write_text("\n".join(["sentence\tlabel", *rows(n, seed)]) + "\n", encoding="utf-8")
    texts = [r.split("\t")[0] for r in rows(300, 5)]
    tok = Tokenizer.train("wordpiece", texts, vocab_size=200, min_frequency=1)
    torch.manual_seed(0)
    cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, dropout=0.0, vocab_size=tok.vocab_size)
    bert = build_model("bert", cfg)
    base = save_checkpoint(
        folder / "bert", bert, tok, {"arch": "bert", "model": dataclasses.asdict(bert.config)}
    )
    result = lmforge.finetune(
        "classify",
        str(base),
        folder / "train.tsv",
        folder / "run",
        dev=folder / "dev.tsv",
        fields=Fields(text="sentence", label="label"),
        epochs=4,
        batch_size=16,
        lr=3e-3,
        progress=False,
    )
    assert result.metrics["val_accuracy"] > 0.9, result.metrics
    return folder / "run" / "best"


@pytest.fixture(scope="module")
def language_models(tmp_path_factory):
    """Random GPT (GPT-2 and Llama style) and encoder-decoder checkpoints with a small BPE tokenizer."""
    folder = tmp_path_factory.mktemp("lms")
    tok = Tokenizer.train("bpe", [r.split("\t")[0] for r in rows(200, 3)], vocab_size=300, min_frequency=1)
    out = {}
    for name, arch, cfg in (
        ("gpt", "gpt", dict(n_layer=2, n_head=2, n_embd=32, block_size=32)),
        (
            "llama",
            "gpt",
            dict(
                n_layer=2,
                n_head=4,
                n_kv_head=2,
                n_embd=32,
                block_size=32,
                position="rope",
                norm="rmsnorm",
                activation="swiglu",
                bias=False,
            ),
        ),
        ("seq2seq", "seq2seq", dict(n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=0.0)),
    ):
        torch.manual_seed(0)
        model = build_model(arch, dict(cfg, vocab_size=tok.vocab_size))
        out[name] = save_checkpoint(
            folder / name, model, tok, {"arch": arch, "model": dataclasses.asdict(model.config)}
        )
    return out


TEXT = "the plot was superb and quite the story"


# ---- attention: the exact path is the model's own ----------------------------------------------------------
@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_gpt_attention_matches_the_fast_path(name, language_models):
    lm = lmforge.load(language_models[name], device="cpu")
    ids = torch.tensor([lm.prompt_ids(TEXT)])
    with torch.no_grad():
        fast = lm.model.encode(ids)
        exact, maps = lm.model.encode(ids, output_attentions=True)
    torch.testing.assert_close(exact, fast, atol=1e-5, rtol=1e-5)
    assert len(maps) == 2 and maps[0].shape == (1, lm.model.config.n_head, ids.shape[1], ids.shape[1])
    for m in maps:
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]), atol=1e-5, rtol=0)
        assert torch.all(m.triu(diagonal=1) == 0)  # causal: no query sees a later token
    got = attentions(lm, TEXT)
    assert got.queries["self"] == got.keys["self"] and len(got.queries["self"]) == ids.shape[1]
    torch.testing.assert_close(got.maps["self"][1], maps[1][0])


def test_gpt_attention_with_a_cache_and_padding_matches(language_models):
    lm = lmforge.load(language_models["gpt"], device="cpu")
    ids = torch.tensor([lm.prompt_ids(TEXT)])
    key_mask = torch.ones_like(ids, dtype=torch.bool)
    key_mask[0, :2] = False  # a left-padded row
    with torch.no_grad():
        fast = lm.model.encode(ids, key_mask=key_mask)
        exact, maps = lm.model.encode(ids, key_mask=key_mask, output_attentions=True)
    torch.testing.assert_close(exact[:, 2:], fast[:, 2:], atol=1e-5, rtol=1e-5)
    assert torch.all(maps[0][0, :, 2:, :2] == 0)  # no real token attends to padding


def test_seq2seq_attention_matches_the_fast_path(language_models):
    lm = lmforge.load(language_models["seq2seq"], device="cpu")
    src = torch.tensor([lm.tokenizer.encode("the plot was superb")])
    tgt = torch.tensor([[lm.tokenizer.eos_id, 5, 6, 7]])
    with torch.no_grad():
        fast = lm.model(src, tgt)
        exact, maps = lm.model.attentions(src, tgt)
    torch.testing.assert_close(exact, fast, atol=1e-5, rtol=1e-5)
    S, T = src.shape[1], tgt.shape[1]
    assert maps["encoder"][0].shape[-2:] == (S, S)
    assert maps["decoder"][0].shape[-2:] == (T, T) and maps["cross"][0].shape[-2:] == (T, S)
    for kind in maps.values():
        for m in kind:
            torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]), atol=1e-5, rtol=0)
    got = attentions(lm, "the plot was superb")
    assert set(got.maps) == {"encoder", "decoder", "cross"}
    assert got.maps["cross"][0].shape[-1] == S and len(got.keys["cross"]) == S


def test_bert_classifier_attention_matches_its_logits(classifier):
    lm = lmforge.load(classifier, device="cpu")
    got = attentions(lm, TEXT)
    net = lm.model
    ids = torch.tensor([lm.tokenizer.encode(TEXT)])
    ids = torch.cat([torch.tensor([[lm.tokenizer.bos_id]]), ids, torch.tensor([[lm.tokenizer.eos_id]])], 1)
    with torch.no_grad():
        fast = net.backbone.encode(ids, torch.ones_like(ids))
    torch.testing.assert_close(got.outputs, fast, atol=1e-5, rtol=1e-5)
    assert got.queries["self"][0] == lm.tokenizer.id_to_token(lm.tokenizer.bos_id)
    for m in got.maps["self"]:
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]), atol=1e-5, rtol=0)
    one = got.select(layer=1, head=0)
    assert one.layer_numbers == [1] and one.head_numbers == [0] and one.maps["self"][0].shape[0] == 1
    with pytest.raises(ConfigError, match="--layer"):
        got.select(layer=5)


# ---- attributions -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["ig", "shap"])
@pytest.mark.parametrize("text", [TEXT, "awful music and the acting was"])
def test_the_deciding_word_ranks_first(method, text, classifier):
    e = explain(classifier, text, method=method)
    key = "superb" if "superb" in text else "awful"
    assert e.prediction["label"] == ("pos" if key == "superb" else "neg")
    assert e.ranked()[0][0] == key, e.ranked()
    share = e.ranked()[0][1] / sum(abs(a) for a in e.attributions)
    assert share > 0.5, e.ranked()  # not first by a hair: most of the explanation
    assert e.tokens == text.split() and len(e.attributions) == len(e.tokens)
    if method == "ig":
        # Completeness: attributions sum to F(x) - F(baseline) up to the integration error; the method refines its
        # steps until |delta| <= 1% of that difference (probabilities: the difference is at most 1, so the error is
        # at most 0.01, well below the deciding word's share, which is most of the difference).
        assert abs(e.delta) <= max(0.01 * abs(e.details["difference"]), 1e-3)
        assert abs(sum(e.attributions) - e.details["difference"]) <= abs(e.delta) + 1e-4
    else:
        assert e.delta is None


def test_target_label_flips_the_sign(classifier):
    e = explain(classifier, TEXT, method="ig", target="neg")
    assert e.target == "neg" and e.ranked()[-1][0] == "superb"  # superb lowers p(neg) the most
    with pytest.raises(ConfigError, match="not a label"):
        explain(classifier, TEXT, target="maybe")


def test_language_model_next_token(language_models):
    e = explain(language_models["gpt"], "the plot was", method="ig")
    assert e.tokens == ["the", "plot", "was"] and "token" in e.prediction and e.delta is not None


def test_reports_exist_and_parse(classifier, tmp_path):
    ig = explain(classifier, TEXT, method="ig")
    sh = explain(classifier, TEXT, method="shap", samples=16)
    maps = attentions(classifier, TEXT).select(layer=0)
    write_report(tmp_path / "r", TEXT, [ig, sh], maps)
    data = json.loads((tmp_path / "r" / "explanation.json").read_text())
    assert [d["method"] for d in data] == ["ig", "shap"]
    assert set(data[0]) >= {"tokens", "attributions", "prediction", "method", "delta"}
    page = (tmp_path / "r" / "explanation.html").read_text()
    assert "superb" in page and "rgba(" in page
    att = json.loads((tmp_path / "r" / "attention.json").read_text())
    assert att["self"]["layers"] == [0] and len(att["self"]["weights"][0]) == 2
    assert "const DATA = {" in (tmp_path / "r" / "attention.html").read_text()
    for png in ("ig.png", "shap.png", "self-layer0-head0.png", "self-layer0-head1.png"):
        assert (tmp_path / "r" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- the command ------------------------------------------------------------------------------------------
def test_cli_all_writes_the_report(classifier, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(
        [
            "explain",
            str(classifier),
            "--text",
            TEXT,
            "--method",
            "all",
            "--samples",
            "8",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"ig", "shap", "attention"}
    assert result["ig"]["tokens"][0] == "the" and result["ig"]["prediction"]["label"] == "pos"
    names = {p.name for p in out.iterdir()}
    assert {"explanation.json", "explanation.html", "ig.png", "shap.png", "attention.html"} <= names
    assert "self-layer1-head1.png" in names
    # the folder is the command's output now: a second run needs --overwrite
    assert main(["explain", str(classifier), "--text", TEXT, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_cli_attention_one_layer(language_models, tmp_path, capsys):
    out = tmp_path / "attn"
    args = ["explain", str(language_models["gpt"]), "--text", "The plot", "--method", "attention"]
    assert main([*args, "--layer", "1", "--head", "all", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["self-layer1-head0.png", "self-layer1-head1.png"]
    assert "wrote" in capsys.readouterr().out
    assert main([*args, "--layer", "1", "--head", "0", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["self"]["layers"] == [1] and got["self"]["heads"] == [0]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "lime"], "unknown --method 'lime'"),
        (["--method", "attention", "--layer", "7"], "--layer must be between 0 and 1"),
        (["--method", "attention", "--head", "x"], "--head must be a head number or all"),
        (["--target", "maybe"], "not a label of this model"),
        (["--text", "superb " * 40], "the model reads at most 32"),
        (["--text", "  "], "cannot explain an empty text"),
    ],
)
def test_cli_bad_input_is_one_line(extra, message, classifier, capsys):
    assert main(["explain", str(classifier), "--text", TEXT, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_unsupported_models_are_one_line(language_models, tmp_path, capsys):
    # attention on a model without any (an LSTM language model), attributions of a model without a task head
    torch.manual_seed(0)
    tok = Tokenizer.load(language_models["gpt"] / "tokenizer.json")
    lstm = build_model(
        "lstm", dict(vocab_size=tok.vocab_size, n_embd=16, n_hidden=16, n_layer=1, block_size=16)
    )
    path = save_checkpoint(
        tmp_path / "lstm", lstm, tok, {"arch": "lstm", "model": dataclasses.asdict(lstm.config)}
    )
    assert main(["explain", str(path), "--text", "the plot", "--method", "attention"]) == 2
    assert "has no attention" in capsys.readouterr().err
    assert main(["explain", str(language_models["seq2seq"]), "--text", "the plot", "--method", "ig"]) == 2
    assert "need a fine-tuned classifier" in capsys.readouterr().err
    # --method all does what the model supports: an encoder-decoder's attention only
    assert (
        main(["explain", str(language_models["seq2seq"]), "--text", "the plot", "--method", "all", "--json"])
        == 0
    )
    assert set(json.loads(capsys.readouterr().out)) == {"attention"}


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    """A BiLSTM tagger of test_ner's synthetic entities: a made-up name after "mr" is PER, a city after "in" LOC."""
    folder = tmp_path_factory.mktemp("ner")
    train, dev = write_conll(folder / "train.txt", 300, 0), write_conll(folder / "dev.txt", 60, 1)
    result = lmforge.finetune(
        "ner", "lstm", train, folder / "run", dev=dev, epochs=6, batch_size=16, lr=3e-3, progress=False
    )
    assert result.metrics["val_f1"] > 0.9, result.metrics
    return folder / "run" / "best"


@pytest.mark.parametrize("method", ["ig", "shap"])
def test_ner_entity_attributions(method, tagger):
    text = "she met mr Kalotorvak in Rome yesterday"
    e = explain(tagger, text, method=method, target="PER")
    assert e.prediction == {"label": "PER", "entity": "Kalotorvak", "score": e.prediction["score"]}
    assert e.tokens == text.split()
    assert {w for w, _ in e.ranked()[:2]} == {"mr", "Kalotorvak"}, e.ranked()  # the name and its cue
    assert explain(tagger, text, method=method, target="Rome").target == "LOC: Rome"
    with pytest.raises(ConfigError, match="no entity 'ORG'"):
        explain(tagger, text, method=method, target="ORG")


# ---- the server -------------------------------------------------------------------------------------------
def test_serve_explain_answers_the_same_json(classifier, language_models, tagger):
    from fastapi.testclient import TestClient

    from lmforge.serve import create_app
    from tests.serve.test_server import assert_error

    with TestClient(create_app(str(classifier), api_key="", device="cpu")) as c:
        assert "/v1/explain" in c.get("/health").json()["endpoints"]
        r = c.post("/v1/explain", json={"input": TEXT})
        assert r.status_code == 200, r.text
        got = r.json()
        want = explain(classifier, TEXT, method="ig").to_json()
        assert got["object"] == "explanation" and got["tokens"] == want["tokens"] == TEXT.split()
        assert got["attributions"] == pytest.approx(want["attributions"], abs=1e-5)
        assert got["prediction"]["label"] == "pos" and got["method"] == "ig" and abs(got["delta"]) < 0.01
        shap = c.post("/v1/explain", json={"input": {"text": TEXT}, "method": "shap", "samples": 8}).json()
        assert shap["method"] == "shap" and shap["delta"] is None
        for body, param in (
            ({"input": "  "}, "input"),
            ({"input": TEXT, "method": "attention"}, "method"),
            ({"input": TEXT, "target": "maybe"}, "input"),
            ({"input": "superb " * 40}, "input"),
            ({"input": TEXT, "samples": 0}, "samples"),
            ({"input": {"text": 3}}, "input"),
        ):
            r = c.post("/v1/explain", json=body)
            assert_error(r, 400)
            assert r.json()["error"]["param"] == param, r.json()
        assert c.post("/v1/explain", json={"input": TEXT}).status_code == 200  # still serving
    with TestClient(create_app(str(tagger), api_key="", device="cpu")) as c:
        got = c.post("/v1/explain", json={"input": "she met mr Kalotorvak in Rome", "target": "Rome"}).json()
        assert got["target"] == "LOC: Rome" and got["prediction"]["entity"] == "Rome"
        assert_error(c.post("/v1/explain", json={"input": "she went today", "target": "PER"}), 400)
    with TestClient(create_app(str(language_models["gpt"]), api_key="", device="cpu")) as c:
        assert_error(c.post("/v1/explain", json={"input": TEXT}), 400, "wrong_model_kind")


def test_without_captum_attributions_name_the_extra(classifier, monkeypatch, capsys):
    import sys

    for name in [m for m in sys.modules if m == "captum" or m.startswith("captum.")] + [
        "captum",
        "captum.attr",
    ]:
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["explain", str(classifier), "--text", TEXT, "--method", "ig"]) == 2
    assert 'pip install "lmforge[explain]"' in capsys.readouterr().err
    assert main(["explain", str(classifier), "--text", TEXT, "--method", "attention", "--json"]) == 0


@pytest.fixture(scope="module")
def qa_model(tmp_path_factory):
    """test_qa's tiny extractive QA model: the answer is the context's one two-digit number."""
    folder = tmp_path_factory.mktemp("qa")
    (folder / "train.json").write_text(json.dumps(squad(300, 0)))
    texts = [p["context"] for p in squad(300, 0)["data"][0]["paragraphs"]] + [QUESTION]
    tok = Tokenizer.train("wordpiece", texts, vocab_size=200, min_frequency=1)
    torch.manual_seed(0)
    bert = build_model(
        "bert", dict(n_layer=2, n_head=2, n_embd=32, block_size=64, dropout=0.0, vocab_size=tok.vocab_size)
    )
    base = save_checkpoint(
        folder / "bert", bert, tok, {"arch": "bert", "model": dataclasses.asdict(bert.config)}
    )
    lmforge.finetune(
        "qa", base, folder / "train.json", folder / "run", epochs=3, max_length=32, doc_stride=12,
        batch_size=16, lr=3e-3, progress=False,
    )  # fmt: skip
    return folder / "run"


def test_qa_answer_attributions(qa_model):
    context = "the fans came to see 42 in the big stadium"
    for method in ("ig", "shap"):
        e = explain(qa_model, QUESTION, method=method, pair=context)
        assert e.prediction["answer"] == "42" and e.target == "answer: 42"
        assert e.tokens == QUESTION.split() + context.split()
        # No ranking is asserted: this model finds the number as the one token that is not a context word, and
        # the padding baseline is such a token too, so "42" itself rightly gets little; the context words that
        # make it stand out get the most. What holds is completeness (IG) and one value per word.
        assert len(e.attributions) == len(e.tokens)
        if method == "ig":
            assert abs(sum(e.attributions) - e.details["difference"]) <= abs(e.delta) + 1e-4
            assert abs(e.delta) <= max(0.01 * abs(e.details["difference"]), 1e-3)
    assert explain(qa_model, QUESTION, pair=context, target="end").target == "end of answer: 42"
    with pytest.raises(ConfigError, match="give the question as the text and the context as the pair"):
        explain(qa_model, context)
    maps = attentions(qa_model, QUESTION, pair=context)
    assert (
        len(maps.queries["self"])
        == len(lmforge.load(qa_model).tokenizer.encode(QUESTION + " " + context)) + 3
    )
