"""`lmforge serve` speaks the rest of the completions protocol: n, logprobs/top_logprobs, echo with prompt
logprobs, token-id prompts, logit_bias, presence/frequency penalties, the tokenizer routes, and a 400 naming any
field it does not implement."""

import pytest
import torch
from fastapi.testclient import TestClient

import lmforge
from lmforge.generate.beam import tokens_until
from lmforge.generate.sampling import SamplingParams, generate_tokens
from lmforge.serve import create_app
from tests.conftest import TINY


@pytest.fixture(scope="module")
def lm(char_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("protocol") / "run"
    overrides = {**TINY, "model.block_size": 64, "train.eval_every": 60}
    lmforge.pretrain(char_data, run, overrides=overrides, max_steps=40, progress=False)
    return lmforge.load(run, device="cpu")


@pytest.fixture(scope="module")
def client(lm):
    with TestClient(create_app(lm, api_key="", max_tokens_limit=200)) as c:
        yield c


def complete(client, **body):
    r = client.post("/v1/completions", json={"model": "x", **body})
    assert r.status_code == 200, r.text
    return r.json()


def direct_logprobs(lm, ids: list[int]) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= 1, from one plain forward pass."""
    with torch.no_grad():
        logp = lm.model(torch.tensor([ids[:-1]])).float().log_softmax(-1)[0]
    return [float(logp[i - 1, t]) for i, t in enumerate(ids) if i]


def test_n_choices_seeded_each_reproducible(client, lm):
    body = complete(client, prompt="alice ", max_tokens=12, temperature=1.0, seed=5, n=3)
    texts = [c["text"] for c in body["choices"]]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert texts == [lm.generate("alice ", max_new_tokens=12, temperature=1.0, seed=5 + k) for k in range(3)]
    two = complete(client, prompt=["alice ", "bob "], max_tokens=6, temperature=0, n=2)
    assert [c["text"] for c in two["choices"]] == [
        lm.generate(p, max_new_tokens=6) for p in ["alice "] * 2 + ["bob "] * 2
    ]
    chat = client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "bob"}], "n": 2, "max_tokens": 4},
    ).json()
    assert len(chat["choices"]) == 2


def test_completion_logprobs_are_the_model_s(client, lm):
    body = complete(client, prompt="alice ", max_tokens=10, temperature=0, logprobs=3)
    choice = choice0 = body["choices"][0]
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == choice["text"]
    ids = lm.prompt_ids("alice ") + lm.tokenizer.encode(choice0["text"])
    assert lp["token_logprobs"] == pytest.approx(direct_logprobs(lm, ids)[-len(lp["tokens"]) :], abs=1e-4)
    for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert len(top) == 3 and max(top.values()) == pytest.approx(value, abs=1e-5)  # greedy: the best one
        assert top[token] == pytest.approx(value, abs=1e-5)
    assert lp["text_offset"][0] == len("alice ") and lp["text_offset"] == sorted(lp["text_offset"])


def test_echo_scores_the_prompt_first_token_null(client, lm):
    body = complete(client, prompt="bob sees carol", max_tokens=0, echo=True, logprobs=1)
    choice = body["choices"][0]
    assert choice["text"] == "bob sees carol"
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == "bob sees carol" and lp["text_offset"][:2] == [0, 1]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    ids = lm.prompt_ids("bob sees carol")
    assert lp["token_logprobs"][1:] == pytest.approx(direct_logprobs(lm, ids)[1:], abs=1e-4)
    # Token ids, as lm-evaluation-harness sends them: the context exactly as given, and one generated token.
    ids = lm.tokenizer.encode("carol helps dave")
    body = complete(client, prompt=[ids, ids[:5]], max_tokens=1, echo=True, logprobs=1, temperature=0)
    first, second = (c["logprobs"]["token_logprobs"] for c in body["choices"])
    assert len(first) == len(ids) + 1 and first[0] is None
    assert first[1:-1] == pytest.approx(direct_logprobs(lm, ids), abs=1e-4)
    assert second[1:5] == pytest.approx(direct_logprobs(lm, ids[:5]), abs=1e-4)
    assert body["choices"][0]["text"].startswith("carol helps dave")


def test_chat_logprobs(client):
    r = client.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "alice"}],
            "max_tokens": 5,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 2,
        },
    )
    choice = r.json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert "".join(c["token"] for c in content) == choice["message"]["content"]
    for c in content:
        assert bytes(c["bytes"]).decode() == c["token"] and len(c["top_logprobs"]) == 2
        assert c["top_logprobs"][0]["logprob"] == pytest.approx(c["logprob"], abs=1e-5)
    plain = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "a"}], "max_tokens": 2}
    )
    assert plain.json()["choices"][0]["logprobs"] is None


def test_logit_bias_and_penalties(client, lm):
    x_id = lm.tokenizer.encode("k")[0]
    forced = complete(client, prompt="alice ", max_tokens=5, temperature=0, logit_bias={str(x_id): 100})
    assert forced["choices"][0]["text"] == "kkkkk"
    greedy = lm.generate("alice ", max_new_tokens=1)
    banned_id = lm.tokenizer.encode(greedy)[0]
    banned = complete(client, prompt="alice ", max_tokens=1, temperature=0, logit_bias={str(banned_id): -100})
    assert banned["choices"][0]["text"] != greedy
    # The penalties count the new tokens: the same text as the decoder given them directly.
    ids = lm.prompt_ids("alice ")
    params = SamplingParams(30, 0.0, frequency_penalty=1.5, presence_penalty=0.5)
    (tokens,) = tokens_until(generate_tokens(lm.model, torch.tensor([ids]), params), 1, lm.tokenizer.eos_id)
    body = complete(
        client, prompt="alice ", max_tokens=30, temperature=0, frequency_penalty=1.5, presence_penalty=0.5
    )
    assert body["choices"][0]["text"] == lm.tokenizer.decode(tokens)
    assert body["choices"][0]["text"] != lm.generate("alice ", max_new_tokens=30)


@pytest.mark.parametrize(
    "body,param",
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"suffix": "end"}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"guided_json": {}}, "guided_json"),
        ({"logprobs": 99}, "logprobs"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"1": 101}}, "logit_bias"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"prompt": [10**9]}, "prompt"),
        ({"logprobs": 1, "stream": True}, "logprobs"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_fields_it_does_not_implement_are_400_naming_them(client, body, param):
    r = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 2, **body})
    assert r.status_code == 400, r.text
    if param is not None:
        assert r.json()["error"]["param"] == param


def test_harmless_fields_and_chat_refusals(client):
    ok = client.post(
        "/v1/completions",
        json={"prompt": "a", "max_tokens": 2, "user": "me", "response_format": {"type": "text"}},
    )
    assert ok.status_code == 200
    chat = {"messages": [{"role": "user", "content": "a"}], "max_tokens": 2}
    r = client.post("/v1/chat/completions", json={**chat, "tool_choice": "auto"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
    r = client.post("/v1/chat/completions", json={**chat, "top_logprobs": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"


def test_tokenizer_routes(client, lm):
    info = client.get("/tokenizer_info").json()
    assert info["eos_token"] == lm.tokenizer.id_to_token(lm.tokenizer.eos_id)
    tokens = client.post("/tokenize", json={"prompt": "alice", "add_special_tokens": False}).json()["tokens"]
    assert tokens == lm.tokenizer.encode("alice")
    assert client.post("/tokenize", json={"prompt": info["eos_token"]}).json()["tokens"] == [
        lm.tokenizer.eos_id
    ]
    assert client.post("/detokenize", json={"tokens": tokens}).json()["prompt"] == "alice"
    assert client.post("/detokenize", json={"tokens": [-1]}).status_code == 400
