"""`lmforge serve` task endpoints: /v1/embeddings (with the official OpenAI client), /v1/ner, /v1/qa, /v1/translate
and /v1/summarize; each answers what the library's own pipeline or `LM.transduce` answers, refuses the wrong kind of
checkpoint and bad inputs with a 4xx, and keeps serving."""

import dataclasses
import json

import pytest
import torch
from fastapi.testclient import TestClient

import lmforge
from lmforge.checkpoint import save_checkpoint
from lmforge.models.registry import build_model
from lmforge.serve import create_app
from lmforge.serve.tasks import MAX_TEXT_CHARS
from lmforge.tasks.classify.examples import Fields
from lmforge.tokenizers import Tokenizer
from tests.serve.test_server import assert_error
from tests.tasks.test_classify import reviews
from tests.tasks.test_ner import write_conll
from tests.tasks.test_qa import QUESTION, squad
from tests.tasks.test_translate import FAST, summary_pairs, translation_pairs

QUIET = {"progress": False}


# ---- tiny checkpoints (a few seconds of training each) ---------------------------------------------------
@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """A random BERT-style and a random GPT checkpoint sharing a word-piece tokenizer of reviews and QA contexts."""
    folder = tmp_path_factory.mktemp("backbones")
    contexts = [p["context"] for p in squad(200, 0)["data"][0]["paragraphs"]]
    tok = Tokenizer.train(
        "wordpiece", [t for t, _ in reviews(300, 5)] + contexts + [QUESTION], vocab_size=250, min_frequency=1
    )
    out = {}
    for arch in ("bert", "gpt"):
        torch.manual_seed(0)
        cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=tok.vocab_size)
        model = build_model(arch, cfg | ({"dropout": 0.0} if arch == "bert" else {}))
        out[arch] = save_checkpoint(
            folder / arch, model, tok, {"arch": arch, "model": dataclasses.asdict(model.config)}
        )
    return out


@pytest.fixture(scope="module")
def checkpoints(backbones, tmp_path_factory):
    """Fine-tuned classify (BERT backbone), ner, qa, translate and summarize checkpoints, by kind."""
    folder = tmp_path_factory.mktemp("tasks")
    (folder / "reviews.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in reviews(200, 0))
    )
    lmforge.finetune(
        "classify",
        str(backbones["bert"]),
        folder / "reviews.tsv",
        folder / "classify",
        fields=Fields(text="sentence", label="label"),
        epochs=1,
        batch_size=16,
        lr=3e-3,
        **QUIET,
    )
    lmforge.finetune(
        "ner",
        "lstm",
        write_conll(folder / "train.txt", 200, 0),
        folder / "ner",
        epochs=3,
        batch_size=16,
        lr=3e-3,
        **QUIET,
    )
    (folder / "squad.json").write_text(json.dumps(squad(200, 0)))
    lmforge.finetune(
        "qa",
        backbones["bert"],
        folder / "squad.json",
        folder / "qa",
        epochs=2,
        max_length=32,
        doc_stride=12,
        batch_size=16,
        lr=3e-3,
        **QUIET,
    )
    (folder / "pairs.tsv").write_text(translation_pairs(200, 0), encoding="utf-8")
    lmforge.finetune(
        "translate",
        "seq2seq-test",
        folder / "pairs.tsv",
        folder / "translate",
        epochs=4,
        lr=3e-3,
        overrides=FAST,
        **QUIET,
    )
    (folder / "news.jsonl").write_text("".join(json.dumps(x) + "\n" for x in summary_pairs(64, 0)))
    lmforge.finetune(
        "summarize",
        "seq2seq-test",
        folder / "news.jsonl",
        folder / "summarize",
        source_field="article",
        target_field="summary",
        epochs=1,
        lr=3e-3,
        overrides=FAST,
        **QUIET,
    )
    return {kind: folder / kind / "best" for kind in ("classify", "ner", "qa", "translate", "summarize")} | {
        "generate": backbones["gpt"],
        "embed": backbones["bert"],
    }


@pytest.fixture(scope="module")
def clients(checkpoints):
    """A test client for a server of each kind of checkpoint."""
    with (
        TestClient(create_app(str(checkpoints["generate"]), api_key="")) as generate,
        TestClient(create_app(str(checkpoints["embed"]), api_key="")) as embed,
        TestClient(create_app(str(checkpoints["classify"]), api_key="")) as classify,
        TestClient(create_app(str(checkpoints["ner"]), api_key="")) as ner,
        TestClient(create_app(str(checkpoints["qa"]), api_key="")) as qa,
        TestClient(create_app(str(checkpoints["translate"]), api_key="", max_tokens_limit=50)) as translate,
        TestClient(create_app(str(checkpoints["summarize"]), api_key="")) as summarize,
    ):
        yield {
            "generate": generate,
            "embed": embed,
            "classify": classify,
            "ner": ner,
            "qa": qa,
            "translate": translate,
            "summarize": summarize,
        }


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


# ---- /v1/embeddings ---------------------------------------------------------------------------------------
def mean_hidden(lm, text: str) -> torch.Tensor:
    """The embedding computed in process: the mean of the final hidden states of `[bos] text [eos]` (BERT) or
    `text [eos]` (GPT), one text at a time."""
    tok, model = lm.tokenizer, lm.model
    backbone = getattr(model.config, "backbone", lm.config["arch"])
    ids = ([tok.bos_id] if backbone == "bert" else []) + tok.encode(text) + [tok.eos_id]
    x = torch.tensor([ids])
    with torch.no_grad():
        if hasattr(model, "hidden"):  # a fine-tuned model: its backbone, without the head
            hidden = model.hidden(x, torch.ones_like(x))
        else:
            hidden = model.encode(x)
    return hidden[0].mean(0)


TEXTS = ["the film was a great story", "an awful dull plot and boring music it was quite bad"]


@pytest.mark.parametrize("kind", ["generate", "embed", "classify"])  # GPT, BERT, a classifier's BERT backbone
def test_embeddings_with_the_openai_client_equal_the_in_process_vectors(kind, checkpoints, clients):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(
        base_url="http://testserver/v1", api_key="unused", max_retries=0, http_client=clients[kind]
    )  # TestClient is an httpx.Client that calls the app directly
    lm = lmforge.load(checkpoints[kind])
    expected = [mean_hidden(lm, t) for t in TEXTS]
    assert not torch.allclose(expected[0], expected[1], atol=1e-3)
    for fmt in ({}, {"encoding_format": "float"}):  # the client asks for base64 unless told otherwise
        done = client.embeddings.create(model="x", input=TEXTS, **fmt)
        assert [d.index for d in done.data] == [0, 1] and all(d.object == "embedding" for d in done.data)
        for got, want in zip(done.data, expected):
            assert len(got.embedding) == want.numel() == 32
            assert torch.allclose(torch.tensor(got.embedding), want, atol=1e-4)
        tokens = sum(len(lm.tokenizer.encode(t)) + (2 if kind != "generate" else 1) for t in TEXTS)
        assert done.usage.prompt_tokens == done.usage.total_tokens == tokens
    single = client.embeddings.create(model="x", input=TEXTS[1])
    assert len(single.data) == 1 and torch.allclose(
        torch.tensor(single.data[0].embedding), expected[1], atol=1e-4
    )
    assert "/v1/embeddings" in clients[kind].get("/health").json()["endpoints"]


def test_embeddings_refuse_bad_input_and_models_without_an_encoder(clients):
    c = clients["embed"]
    for body in (
        {"input": ""},
        {"input": "   "},
        {"input": []},
        {"input": ["a good film"] * 65},
        {"input": ["a good film", ""]},
        {"input": 5},
        {"input": [[1, 2, 3]]},
        {"input": "a", "encoding_format": "hex"},
        {"input": "a", "dimensions": 8},
    ):
        assert_error(c.post("/v1/embeddings", json=body), 400)
        assert ok(c.post("/v1/embeddings", json={"input": "good"}))["data"][0]["index"] == 0
    too_long = c.post("/v1/embeddings", json={"input": ["good", "the film " * 40]})  # 82 tokens, context 64
    assert_error(too_long, 400, "context_length_exceeded")
    assert "input 1 is 82 tokens long" in too_long.json()["error"]["message"]
    for kind in ("qa", "translate", "summarize"):
        wrong = clients[kind].post("/v1/embeddings", json={"input": "good"})
        assert_error(wrong, 400, "wrong_model_kind")
        assert f"/v1/{kind}" in wrong.json()["error"]["message"]
    assert (
        clients["ner"].post("/v1/embeddings", json={"input": "mr Kalo"}).status_code == 200
    )  # a tagger's LSTM


# ---- /v1/ner and /v1/qa -----------------------------------------------------------------------------------
def test_ner_endpoint_answers_what_the_pipeline_answers(checkpoints, clients):
    ner = lmforge.pipeline("ner", model=checkpoints["ner"])
    texts = ["she  met mr   Kalotorvak\tin New   York ,yesterday", "she went today", "mr Lomiren in Rome"]
    data = ok(clients["ner"].post("/v1/ner", json={"text": texts}))["data"]
    assert [d["index"] for d in data] == [0, 1, 2]
    assert [d["entities"] for d in data] == ner(texts)
    assert any(data[0]["entities"]) and all(
        texts[0][e["start"] : e["end"]] == e["text"] for e in data[0]["entities"]
    )
    assert set(data[0]["entities"][0]) == {"type", "text", "start", "end", "score", "entity_group", "word"}
    single = ok(clients["ner"].post("/v1/ner", json={"text": texts[2]}))
    assert single["data"] == [{"index": 0, "entities": ner(texts[2])}] and single["object"] == "list"


def test_qa_endpoint_takes_one_question_or_a_list(checkpoints, clients):
    qa = lmforge.pipeline("qa", model=checkpoints["qa"])
    items = [
        {"question": QUESTION, "context": "the fans came to see 42 in the big stadium"},
        {"question": QUESTION, "context": "many fans came on a sunny day 17 and the game was played " * 3},
    ]
    data = ok(clients["qa"].post("/v1/qa", json=items))["data"]
    assert [d.pop("index") for d in data] == [0, 1] and data == qa(items)
    assert all(items[i]["context"][d["start"] : d["end"]] == d["answer"] for i, d in enumerate(data))
    single = ok(clients["qa"].post("/v1/qa", json={"model": "x", **items[0]}))["data"]
    assert len(single) == 1 and single[0]["answer"] == data[0]["answer"]


# ---- /v1/translate and /v1/summarize ----------------------------------------------------------------------
def test_translate_endpoint_equals_transduce_greedy_and_with_beams(checkpoints, clients):
    lm = lmforge.load(checkpoints["translate"])
    texts = ["red cat", "sun moon blue dog"]
    c = clients["translate"]
    data = ok(c.post("/v1/translate", json={"text": texts}))["data"]
    assert data == [{"index": i, "text": t} for i, t in enumerate(lm.transduce(texts))]
    beams = ok(c.post("/v1/translate", json={"text": texts, "num_beams": 3}))["data"]
    assert [d["text"] for d in beams] == lm.transduce(texts, num_beams=3)
    short = ok(c.post("/v1/translate", json={"text": "red cat", "max_tokens": 2, "num_beams": 1}))["data"]
    assert short == [{"index": 0, "text": lm.transduce("red cat", max_new_tokens=2)}]


def test_a_summarizer_serves_summarize_and_a_translator_translate(checkpoints, clients):
    lm = lmforge.load(checkpoints["summarize"])
    article = summary_pairs(1, 7)[0]["article"]
    data = ok(clients["summarize"].post("/v1/summarize", json={"text": [article], "max_tokens": 12}))["data"]
    assert data == [{"index": 0, "text": lm.transduce(article, max_new_tokens=12)}]
    health = clients["summarize"].get("/health").json()
    assert (health["kind"], health["endpoints"]) == ("summarize", ["/v1/summarize", "/v1/attention"])
    wrong = clients["summarize"].post("/v1/translate", json={"text": "red cat"})
    assert_error(wrong, 400, "wrong_model_kind")
    assert "/v1/summarize" in wrong.json()["error"]["message"]
    wrong = clients["translate"].post("/v1/summarize", json={"text": "red cat"})
    assert "/v1/translate" in wrong.json()["error"]["message"]


# ---- the wrong kind of checkpoint, bad inputs: 4xx, and the server keeps serving --------------------------
GOOD = {
    "/v1/completions": {"prompt": "the film", "max_tokens": 2},
    "/v1/embeddings": {"input": "the film"},
    "/v1/classify": {"input": "the film was great"},
    "/v1/ner": {"text": "mr Kalo in Rome"},
    "/v1/qa": {"question": QUESTION, "context": "the game 42 was played"},
    "/v1/translate": {"text": "red cat"},
    "/v1/summarize": {"text": "red cat. sun moon."},
}


@pytest.mark.parametrize("kind", ["generate", "embed", "classify", "ner", "qa", "translate", "summarize"])
def test_every_endpoint_the_model_does_not_serve_says_what_it_serves(kind, clients):
    c = clients[kind]
    serves = c.get("/health").json()["endpoints"]
    assert serves and [m["endpoints"] for m in c.get("/v1/models").json()["data"]] == [serves]
    for path, body in GOOD.items():
        r = c.post(path, json=body)
        if path in serves:
            assert r.status_code == 200, (path, r.text)
            continue
        assert_error(r, 400, "wrong_model_kind")
        assert all(p in r.json()["error"]["message"] for p in serves), (path, r.json())
        assert c.post(serves[0], json=GOOD[serves[0]]).status_code == 200  # still serving


HUGE = "a" * (MAX_TEXT_CHARS + 1)
BAD = [
    ("ner", {"text": ""}, None),
    ("ner", {"text": " \n "}, None),
    ("ner", {"text": []}, None),
    ("ner", {"text": ["mr Kalo"] * 65}, None),
    ("ner", {"text": ["mr Kalo", ""]}, None),
    ("ner", {"text": HUGE}, "context_length_exceeded"),
    ("ner", {"text": 5}, None),
    ("ner", {}, None),
    ("qa", {"question": "", "context": "the game 42"}, None),
    ("qa", {"question": QUESTION, "context": "  "}, None),
    ("qa", [], None),
    ("qa", [{"question": QUESTION, "context": "42"}] * 65, None),
    ("qa", {"question": QUESTION, "context": HUGE}, "context_length_exceeded"),
    ("qa", {"question": "what " * 30, "context": "the game 42"}, None),  # no room left for the context
    ("qa", {"question": QUESTION}, None),
    ("qa", [{"question": QUESTION, "context": "42"}, {"context": "17"}], None),
    ("translate", {"text": ""}, None),
    ("translate", {"text": []}, None),
    ("translate", {"text": ["red cat"] * 65}, None),
    ("translate", {"text": "red cat " * 40}, None),  # longer than the model's 64 tokens
    ("translate", {"text": "red cat", "num_beams": 0}, None),
    ("translate", {"text": "red cat", "num_beams": 17}, None),
    ("translate", {"text": "red cat", "max_tokens": 0}, None),
    ("translate", {"text": "red cat", "max_tokens": 51}, None),  # over the server's max_tokens_limit
    ("translate", {"text": "red cat", "num_beams": "many"}, None),
]


@pytest.mark.parametrize("kind,body,code", BAD)
def test_bad_task_requests_get_4xx_and_the_next_good_one_is_answered(kind, body, code, clients):
    path = f"/v1/{kind}"
    assert_error(clients[kind].post(path, json=body), 400, code)
    assert clients[kind].post(path, json=GOOD[path]).status_code == 200


def test_the_playground_calls_the_task_endpoints(clients):
    page = clients["ner"].get("/").text
    paths = ("completions", "classify", "ner", "qa", "translate", "summarize", "embeddings")
    assert all(f'"/v1/{p}"' in page for p in paths)
    assert "textContent" in page and ".innerHTML" not in page
    schema = clients["qa"].get("/openapi.json").json()  # what /docs shows
    assert all(f"/v1/{p}" in schema["paths"] for p in paths)
