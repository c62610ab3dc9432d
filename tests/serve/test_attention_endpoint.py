"""`POST /v1/attention` of a served generative model: the model's own attention weights (lmforge.explain.attentions,
one layer or all of them), and one 4xx line for what it cannot answer. The playground's heatmaps of them:
tests/serve/test_playground_attention.py."""

import dataclasses

import pytest
import torch
from fastapi.testclient import TestClient

import lmforge
from lmforge.checkpoint import save_checkpoint
from lmforge.explain import attentions
from lmforge.models.registry import build_model
from lmforge.serve import create_app
from lmforge.tokenizers import Tokenizer

TEXT = "alice sees bob"


def random_checkpoint(folder, arch: str, **shape):
    tok = Tokenizer.train("char", ["abcdefghijklmnopqrstuvwxyz .,"])
    torch.manual_seed(0)
    model = build_model(
        arch, dict(n_layer=2, n_head=2, n_embd=16, block_size=24, vocab_size=tok.vocab_size, **shape)
    )
    return save_checkpoint(
        folder / arch, model, tok, {"arch": arch, "model": dataclasses.asdict(model.config)}
    )


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    """A random tiny GPT: attention maps need no training."""
    return random_checkpoint(tmp_path_factory.mktemp("attn"), "gpt")


@pytest.fixture(scope="module")
def client(gpt):
    with TestClient(create_app(str(gpt), api_key="")) as c:
        yield c


def test_the_endpoint_answers_the_models_own_attention(client, gpt):
    assert "/v1/attention" in client.get("/health").json()["endpoints"]
    answer = client.post("/v1/attention", json={"input": TEXT, "layer": 1})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["object"], body["layers"], body["heads"]) == ("attention", 2, 2)
    got = body["maps"]["self"]
    want = attentions(lmforge.load(gpt), TEXT).select(layer=1).to_json()["self"]
    assert (
        got["queries"] == want["queries"] == got["keys"] and got["layers"] == [1] and got["heads"] == [0, 1]
    )
    weights = torch.tensor(got["weights"][0])  # (heads, T, T)
    assert torch.allclose(weights, torch.tensor(want["weights"][0]), atol=1e-6)
    assert torch.allclose(weights.sum(-1), torch.ones(2, len(got["queries"])), atol=1e-5)
    assert torch.equal(weights.triu(1), torch.zeros_like(weights))  # a decoder looks back only
    every = client.post("/v1/attention", json={"input": TEXT}).json()["maps"]["self"]
    assert every["layers"] == [0, 1] and len(every["weights"]) == 2


@pytest.mark.parametrize(
    "body, words",
    [
        ({"input": TEXT, "layer": 2}, "between 0 and 1"),
        ({"input": "   "}, "input is empty"),
        ({"input": "abc " * 20}, "reads at most 24"),
    ],
)
def test_bad_requests_are_one_4xx_line(client, body, words):
    answer = client.post("/v1/attention", json=body)
    assert answer.status_code == 400 and words in answer.json()["error"]["message"], answer.text


def test_a_model_without_generation_is_refused(tmp_path):
    with TestClient(create_app(str(random_checkpoint(tmp_path, "bert", dropout=0.0)), api_key="")) as c:
        assert "/v1/attention" not in c.get("/health").json()["endpoints"]
        answer = c.post("/v1/attention", json={"input": TEXT})
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "wrong_model_kind", answer.text
