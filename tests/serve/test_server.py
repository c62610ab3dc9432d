"""`lmforge serve`: OpenAI-compatible completions, streaming, errors, auth, metrics, classification, batching."""

import json
import random
import socket
import threading

import pytest
from fastapi.testclient import TestClient

import lmforge
from lmforge.serve import create_app
from lmforge.serve.batching import CallJob
from lmforge.tasks.classify.examples import Fields
from tests.conftest import TINY


@pytest.fixture(scope="module")
def lm(char_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("serve") / "run"
    # A 64-token context holds the chat template's prompts.
    overrides = {**TINY, "model.block_size": 64, "train.eval_every": 60}
    lmforge.pretrain(char_data, run, overrides=overrides, max_steps=60, progress=False)
    return lmforge.load(run)


@pytest.fixture(scope="module")
def app(lm):
    return create_app(
        lm, api_key="", max_batch_size=8, max_tokens_limit=200
    )  # "" : no key, even if env has one


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


def complete(client, **body):
    return client.post("/v1/completions", json={"model": "x", **body})


def sse_events(response) -> list[str]:
    assert response.headers["content-type"].startswith("text/event-stream")
    return [e.removeprefix("data: ") for e in response.text.split("\n\n") if e.strip()]


def assert_error(response, status: int, code: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"] and "type" in error and "code" in error
    if code is not None:
        assert error["code"] == code


def test_greedy_completion_equals_lm_generate_and_counts_usage(client, lm):
    r = complete(client, prompt="alice ", max_tokens=20, temperature=0)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    choice = body["choices"][0]
    assert choice["text"] == lm.generate("alice ", max_new_tokens=20, temperature=0) and choice["text"]
    assert choice["finish_reason"] in ("length", "stop")
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(lm.prompt_ids("alice "))
    assert (
        0 < usage["completion_tokens"] <= 20
        and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    )


def test_stop_strings_seeds_and_prompt_lists_match_lm_generate(client, lm):
    greedy = lm.generate("bob ", max_new_tokens=30, temperature=0)
    stop = greedy[5:7]  # something the model is sure to write
    r = complete(client, prompt="bob ", max_tokens=30, temperature=0, stop=["zzz", stop])
    assert r.json()["choices"][0]["text"] == lm.generate("bob ", max_new_tokens=30, temperature=0, stop=stop)
    assert len(r.json()["choices"][0]["text"]) <= 5
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    r = complete(client, prompt="carol ", max_tokens=25, temperature=1.0, top_k=5, seed=3)
    assert r.json()["choices"][0]["text"] == lm.generate(
        "carol ", max_new_tokens=25, temperature=1.0, top_k=5, seed=3
    )
    r = complete(client, prompt=["alice ", "dave meets"], max_tokens=12, temperature=0)
    texts = [c["text"] for c in r.json()["choices"]]
    assert texts == lm.generate(["alice ", "dave meets"], max_new_tokens=12, temperature=0)


@pytest.mark.parametrize("prompt", ["alice ", "erin helps frank at 1"])
def test_streamed_chunks_add_up_to_the_greedy_text(client, lm, prompt):
    with client.stream(
        "POST",
        "/v1/completions",
        json={
            "prompt": prompt,
            "max_tokens": 25,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as r:
        r.read()
    assert r.status_code == 200
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks) and len({c["id"] for c in chunks}) == 1
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == lm.generate(prompt, max_new_tokens=25, temperature=0)
    assert chunks[-2]["choices"][0]["finish_reason"] in ("length", "stop")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_chat_completion_uses_the_plain_template(client, lm):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "alice"}]
    r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 15, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    expected = lm.generate(
        "System: be brief\nUser: alice\nAssistant:",
        max_new_tokens=15,
        temperature=0,
        stop=["\nUser:", "\nSystem:"],
    )
    assert body["choices"][0]["message"]["content"] == expected and body["usage"]["prompt_tokens"] > 10

    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={"messages": messages, "max_tokens": 15, "temperature": 0, "stream": True},
    ) as r:
        r.read()
    chunks = [json.loads(e) for e in sse_events(r)[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected


def test_a_chat_template_in_the_config_is_used(lm):
    lm.config["chat_template"] = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"
    )
    try:
        with TestClient(create_app(lm, api_key="")) as c:
            r = c.post(
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "bob"}], "max_tokens": 8, "temperature": 0},
            )
    finally:
        del lm.config["chat_template"]
    assert r.json()["choices"][0]["message"]["content"] == lm.generate(
        "<user>bob\n<assistant>", max_new_tokens=8, temperature=0
    )


BAD = [
    (dict(prompt="alice " * 20, max_tokens=5), 400, "context_length_exceeded"),  # 121 tokens, context 64
    (dict(prompt="a", max_tokens=0), 400, None),
    (dict(prompt="a", max_tokens=201), 400, None),
    (dict(prompt="a", temperature=-0.5), 400, None),
    (dict(prompt="a", temperature=2.5), 400, None),
    (dict(prompt="a", top_p=0), 400, None),
    (dict(prompt="a", top_p=1.5), 400, None),
    (dict(prompt="a", top_k=0), 400, None),
    (dict(prompt="a", n=0), 400, None),
    (dict(prompt="a", n=2, stream=True), 400, None),
    (dict(prompt="a", stop=""), 400, None),
    (dict(prompt=["a", "b"], stream=True), 400, None),
    (dict(prompt=5), 400, None),
    (dict(max_tokens=3), 400, None),
    (dict(prompt="a", max_tokens="many"), 400, None),
]


@pytest.mark.parametrize("body,status,code", BAD)
def test_bad_completion_requests_get_4xx_in_openai_shape(client, body, status, code):
    assert_error(complete(client, **body), status, code)


def test_bad_bodies_paths_and_chats(client):
    headers = {"Content-Type": "application/json"}
    assert_error(
        client.post("/v1/completions", content=b'{"prompt": "a",', headers=headers), 400, "invalid_json"
    )
    assert_error(client.post("/v1/completions", content=b"[1, 2]", headers=headers), 400)
    huge = json.dumps({"prompt": "a" * (1 << 20)}).encode()
    assert_error(client.post("/v1/completions", content=huge, headers=headers), 413, "request_too_large")
    chunked = iter([huge[: 1 << 19], huge[1 << 19 :]])  # no Content-Length: counted as it arrives
    assert_error(client.post("/v1/completions", content=chunked, headers=headers), 413, "request_too_large")
    assert_error(client.post("/v1/chat/completions", json={"messages": []}), 400)
    assert_error(client.post("/v1/chat/completions", json={"messages": [{"content": "no role"}]}), 400)
    assert_error(client.get("/v1/nothing-here"), 404)
    assert_error(client.get("/v1/completions"), 405)


def test_api_key_is_required_when_set(lm, monkeypatch):
    monkeypatch.setenv("LMFORGE_API_KEY", "s3cret")
    with TestClient(create_app(lm)) as c:
        assert_error(complete(c, prompt="a", max_tokens=2), 401, "invalid_api_key")
        assert_error(
            c.post("/v1/completions", json={"prompt": "a"}, headers={"Authorization": "Bearer wrong"}), 401
        )
        assert_error(c.get("/v1/models", headers={"Authorization": "s3cret"}), 401)
        ok = c.post(
            "/v1/completions",
            json={"prompt": "a", "max_tokens": 2},
            headers={"Authorization": "Bearer s3cret"},
        )
        assert ok.status_code == 200
        assert c.get("/health").status_code == 200  # probes and the playground page stay open
    with TestClient(create_app(lm, api_key="other")) as c:
        assert c.get("/v1/models", headers={"Authorization": "Bearer other"}).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 401


def test_models_health_playground_and_metrics(lm):
    with TestClient(create_app(lm, api_key="")) as c:
        models = c.get("/v1/models").json()
        assert models["object"] == "list" and models["data"][0]["kind"] == "generate"
        assert c.get("/health").json()["endpoints"] == [
            "/v1/completions",
            "/v1/chat/completions",
            "/v1/attention",
            "/v1/embeddings",
        ]
        page = c.get("/")
        assert page.status_code == 200 and "textContent" in page.text and ".innerHTML" not in page.text
        for _ in range(3):
            complete(c, prompt="alice ", max_tokens=4, temperature=0)
        complete(c, prompt="a", max_tokens=0)
        c.get("/no/such/page")
        text = c.get("/metrics").text
    lines = set(text.splitlines())
    assert 'lmforge_requests_total{endpoint="/v1/completions",status="200"} 3' in lines
    assert 'lmforge_requests_total{endpoint="/v1/completions",status="400"} 1' in lines
    assert 'lmforge_requests_total{endpoint="other",status="404"} 1' in lines
    assert 'lmforge_request_latency_seconds_count{endpoint="/v1/completions"} 4' in lines
    generated = next(ln for ln in lines if ln.startswith("lmforge_generated_tokens_total "))
    assert 0 < int(generated.split()[1]) <= 12


@pytest.mark.parametrize("max_tokens, decodes", [(10, 1), (60, 2)])
def test_concurrent_requests_are_decoded_together(app, client, lm, max_tokens, decodes):
    """Requests queue behind a busy worker; once it is free they are gathered and decoded in shared calls: one
    left-padded batch, or one per prompt length when padded rows would outgrow the context of 64 tokens."""
    batcher = app.state.batcher
    before = (batcher.stats.batches, batcher.stats.batched_requests)
    gate = threading.Event()
    batcher.submit(CallJob(gate.wait))  # keeps the worker busy, deterministically
    prompts = ["alice ", "frank ", "carol ", "bob at", "dave", "erin"]  # 7, 7, 7, 7, 5 and 5 tokens
    results = [None] * len(prompts)

    def ask(i):
        results[i] = complete(client, prompt=prompts[i], max_tokens=max_tokens, temperature=0)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for _ in range(2000):
        if batcher.pending() == len(prompts):
            break
        threading.Event().wait(0.005)
    assert batcher.pending() == len(prompts)
    gate.set()
    for t in threads:
        t.join(timeout=60)
    assert all(r.status_code == 200 for r in results)
    # Greedy rows in a batch continue exactly as they would alone.
    assert [r.json()["choices"][0]["text"] for r in results] == [
        lm.generate(p, max_new_tokens=max_tokens, temperature=0) for p in prompts
    ]
    assert batcher.stats.batches - before[0] == decodes
    assert batcher.stats.batched_requests - before[1] == 6 and batcher.stats.largest_batch >= 4


def test_a_request_that_takes_too_long_is_stopped_with_504(lm):
    app = create_app(lm, api_key="", timeout=0.2)
    gate = threading.Event()
    with TestClient(app) as c:
        app.state.batcher.submit(CallJob(gate.wait))  # the worker is busy past the request's deadline
        try:
            assert_error(complete(c, prompt="alice ", max_tokens=5), 504, "timeout")
        finally:
            gate.set()
        assert app.state.batcher.stats.cancelled == 1
        assert complete(c, prompt="alice ", max_tokens=5).status_code == 200


def test_many_concurrent_mixed_requests_all_succeed(client, lm):
    rng = random.Random(0)
    bodies = [
        dict(
            prompt=rng.choice(["alice ", "bob ", "x"]),
            max_tokens=rng.randint(1, 8),
            temperature=rng.choice([0, 0.7]),
            stream=rng.random() < 0.3,
        )
        for _ in range(16)
    ]
    statuses = []

    def ask(body):
        statuses.append(complete(client, **body).status_code)

    threads = [threading.Thread(target=ask, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert statuses == [200] * 16


# ---- a fine-tuned classifier ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clf")
    rng = random.Random(0)
    rows = ["sentence\tlabel"]
    for _ in range(200):
        label = rng.choice(["pos", "neg"])
        words = rng.sample(["the", "film", "was", "a", "plot", "story"], 3) + [
            rng.choice(["good", "great", "lovely"] if label == "pos" else ["bad", "awful", "dull"])
        ]
        rng.shuffle(words)
        rows.append(" ".join(words) + "\t" + label)
    (folder / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    lmforge.finetune(
        "classify",
        "lstm",
        folder / "train.tsv",
        folder / "run",
        fields=Fields(text="sentence", label="label"),
        epochs=3,
        batch_size=16,
        lr=3e-3,
        progress=False,
    )
    return folder / "run" / "best"


def test_classify_endpoint_and_the_wrong_kind_of_model(classifier, client):
    with TestClient(create_app(str(classifier), api_key="")) as c:
        r = c.post("/v1/classify", json={"input": ["a lovely great film", "an awful dull plot"]})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [d["label"] for d in data] == ["pos", "neg"]
        assert all(abs(sum(x["score"] for x in d["labels"]) - 1) < 1e-5 for d in data)
        single = c.post("/v1/classify", json={"input": "good story"}).json()["data"]
        assert len(single) == 1 and single[0]["label"] == "pos"
        assert_error(c.post("/v1/classify", json={"input": "   "}), 400)
        assert_error(c.post("/v1/classify", json={"input": []}), 400)
        wrong = c.post("/v1/completions", json={"prompt": "a"})
        assert_error(wrong, 400, "wrong_model_kind")
        assert "/v1/classify" in wrong.json()["error"]["message"]
        assert c.get("/health").json()["kind"] == "classify"
    wrong = client.post("/v1/classify", json={"input": "a"})
    assert_error(wrong, 400, "wrong_model_kind")
    assert "/v1/completions" in wrong.json()["error"]["message"]


# ---- a real server and the official client -------------------------------------------------------------
@pytest.fixture(scope="module")
def server_app(lm):
    return create_app(lm, api_key="", max_tokens_limit=5000)


@pytest.fixture(scope="module")
def server(server_app):
    uvicorn = pytest.importorskip("uvicorn")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port, held from the start so nothing else can take it
    srv = uvicorn.Server(uvicorn.Config(server_app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(1000):
        if srv.started:
            break
        threading.Event().wait(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv.should_exit = True
    thread.join(timeout=10)
    sock.close()
    assert not thread.is_alive()


def test_the_openai_client_against_a_real_server(server, lm):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    done = client.completions.create(model="lmforge", prompt="alice ", max_tokens=15, temperature=0)
    expected = lm.generate("alice ", max_new_tokens=15, temperature=0)
    assert done.choices[0].text == expected and done.usage.completion_tokens > 0
    stream = client.completions.create(
        model="lmforge", prompt="alice ", max_tokens=15, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in stream if c.choices) == expected
    chat = client.chat.completions.create(
        model="lmforge", messages=[{"role": "user", "content": "bob"}], max_tokens=10, temperature=0
    )
    assert chat.choices[0].message.role == "assistant" and chat.usage.total_tokens > 0
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="lmforge", prompt="a", max_tokens=0)
    assert [m.id for m in client.models.list()] == [lm.path.parent.name + "/" + lm.path.name]


def test_a_client_that_disconnects_stops_its_generation(server, server_app):
    import httpx

    stats = server_app.state.batcher.stats
    before = (stats.cancelled, stats.generated_tokens)
    body = {"prompt": "alice ", "max_tokens": 5000, "temperature": 0.8, "stream": True}
    with httpx.stream("POST", server + "/v1/completions", json=body, timeout=30) as r:
        next(r.iter_lines())  # the first event arrived: generation is running
    for _ in range(1000):  # the server notices the closed connection at its next write
        if stats.cancelled > before[0]:
            break
        threading.Event().wait(0.01)
    assert stats.cancelled == before[0] + 1
    for _ in range(1000):  # the worker stops at its next token and counts what it made
        if stats.generated_tokens > before[1]:
            break
        threading.Event().wait(0.01)
    assert 0 < stats.generated_tokens - before[1] < 5000
