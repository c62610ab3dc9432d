"""`lmforge serve` under hostile or careless clients, through a real uvicorn server on a free port.

Each case is one finding of the reliability review: a value that crashed a request (and, through the 500, the
client's keep-alive connection), work done for clients that had hung up, CPU work on the event loop, bodies and
connections held open without end, bad `lmforge serve` / `lmforge generate` flags, and an exposed /metrics or
Host. Every error is a 4xx in OpenAI's shape and leaves the connection usable: the tests send the bad request and
then a good one on the same connection.
"""

import contextlib
import http.client
import json
import socket
import threading

import pytest

import lmforge
from lmforge.cli.main import main
from lmforge.errors import ConfigError
from lmforge.generate.sampling import SamplingParams
from lmforge.serve import create_app
from lmforge.serve.app import server_config
from lmforge.serve.batching import BatchStats, CallJob, GenerateJob, decode_batch
from tests.conftest import TINY

uvicorn = pytest.importorskip("uvicorn")

WAIT = 30.0  # seconds: a generous bound for what should happen at once (never a timing assertion)


# ---- a tiny model and real servers -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(char_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("reliability") / "run"
    overrides = {**TINY, "model.block_size": 64, "train.eval_every": 30}
    lmforge.pretrain(char_data, run, overrides=overrides, max_steps=30, progress=False)
    return run / "best"


@pytest.fixture(scope="module")
def lm(ckpt):
    return lmforge.load(ckpt)


@contextlib.contextmanager
def serving(app):
    """`app` served by uvicorn (with server_config's settings) on a free loopback port; yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # held from the start so nothing else can take it
    srv = uvicorn.Server(server_config(app, log_level="critical"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert until(lambda: srv.started)
        yield sock.getsockname()[1]
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        sock.close()


def until(condition, timeout: float = WAIT) -> bool:
    """Polls `condition` until it holds (True) or `timeout` seconds pass (False)."""
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return True
        done.wait(0.01)
    return condition()


@pytest.fixture(scope="module")
def app(lm):
    return create_app(lm, api_key="", max_tokens_limit=500, body_timeout=0.5, keep_alive_timeout=0.5)


@pytest.fixture(scope="module")
def port(app):
    with serving(app) as port:
        yield port


class Conn:
    """One keep-alive HTTP/1.1 connection; `request` fails if the server closed it or asks to."""

    def __init__(self, port: int):
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        self.http.connect()
        self.sock = self.http.sock

    def request(self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None):
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        self.http.request(
            method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})}
        )
        response = self.http.getresponse()
        data = response.read()
        assert self.http.sock is self.sock, "the server closed the connection"
        return response.status, (json.loads(data) if data.startswith(b"{") else data.decode())

    def close(self):
        self.http.close()


def metric(port: int, name: str) -> float:
    conn = Conn(port)
    status, text = conn.request("GET", "/metrics")
    conn.close()
    assert status == 200
    values = [float(line.split()[-1]) for line in text.splitlines() if line.split(" ")[0] == name]
    return values[0] if values else 0.0


GOOD = {"prompt": "alice ", "max_tokens": 3, "temperature": 0}
COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"


def chat(**fields) -> dict:
    return {"messages": [{"role": "user", "content": "alice"}], "max_tokens": 3, **fields}


# ---- finding 2: values that crashed a request and dropped the connection ------------------------------------
BAD_VALUES = [
    (COMPLETIONS, {**GOOD, "seed": 2**64}, "seed"),
    (COMPLETIONS, {**GOOD, "seed": -(2**63) - 1}, "seed"),
    (CHAT, chat(seed=2**64), "seed"),
    (COMPLETIONS, {**GOOD, "stream": True, "seed": 2**64}, "seed"),
    (COMPLETIONS, {**GOOD, "temperature": 1, "repetition_penalty": 1e-300}, "repetition_penalty"),
    (COMPLETIONS, {**GOOD, "temperature": 1, "repetition_penalty": 1e300}, "repetition_penalty"),
    (CHAT, chat(temperature=1, repetition_penalty=1e-300), "repetition_penalty"),
    (COMPLETIONS, {**GOOD, "temperature": 1e-300}, "temperature"),
    (COMPLETIONS, {**GOOD, "prompt": "\ud800"}, "prompt"),
    (COMPLETIONS, {**GOOD, "prompt": ["alice", "bob \udfff"]}, "prompt.1"),
    (COMPLETIONS, {**GOOD, "stop": ["\ud800"]}, "stop.0"),
    (CHAT, {"messages": [{"role": "user", "content": "hi \ud800"}]}, "messages.0.content"),
    (CHAT, {"messages": [{"role": "\ud800", "content": "hi"}]}, "messages.0.role"),
    (
        CHAT,
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}]},
        "messages.0.content.0.text",
    ),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": {"a": 1}}]}]}, "messages"),
    ("/v1/embeddings", {"input": ["fine", "\ud800"]}, "input.1"),
]
# JSON's NaN and Infinity (Python's json writes them; strict JSON has no spelling for them)
NON_FINITE = [
    (COMPLETIONS, {**GOOD, "temperature": 1, "repetition_penalty": float("nan")}, "repetition_penalty"),
    (COMPLETIONS, {**GOOD, "temperature": 1, "repetition_penalty": float("inf")}, "repetition_penalty"),
    (CHAT, chat(repetition_penalty=float("nan")), "repetition_penalty"),
    (COMPLETIONS, {**GOOD, "temperature": float("nan")}, "temperature"),
    (COMPLETIONS, {**GOOD, "top_p": float("nan")}, "top_p"),
]


@pytest.mark.parametrize("path,body,param", BAD_VALUES + NON_FINITE)
def test_a_bad_value_is_a_400_and_the_connection_stays_usable(port, path, body, param):
    conn = Conn(port)
    status, error = conn.request("POST", path, body)
    assert status == 400, error
    assert error["error"]["message"] and error["error"]["param"] == param
    status, ok = conn.request("POST", COMPLETIONS, GOOD)  # the same connection
    assert status == 200 and ok["choices"][0]["text"] is not None
    conn.close()


def test_a_bug_is_a_500_that_keeps_the_connection(lm):
    app = create_app(lm, api_key="")

    @app.get("/boom")
    async def boom():
        raise RuntimeError("a bug")

    with serving(app) as port:
        conn = Conn(port)
        status, error = conn.request("GET", "/boom")
        assert (
            status == 500
            and error["error"]["type"] == "server_error"
            and "a bug" in error["error"]["message"]
        )
        for path in ("/no/such/page", COMPLETIONS):  # 404, then 405
            assert conn.request("GET", path)[0] in (404, 405)
        assert (
            conn.request("POST", COMPLETIONS, b'{"prompt": ', {"Content-Type": "application/json"})[0] == 400
        )
        assert conn.request("POST", COMPLETIONS, GOOD)[0] == 200
        conn.close()


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--temperature", "nan"),
        ("--temperature", "inf"),
        ("--repetition-penalty", "nan"),
        ("--repetition-penalty", "1e-300"),
        ("--top-p", "nan"),
    ],
)
def test_generate_refuses_non_finite_sampling_flags_in_one_line(ckpt, capsys, flag, value):
    assert main(["generate", str(ckpt), "--prompt", "alice", "--max-new-tokens", "3", flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and flag[2:].replace("-", "_") in err[0]


def test_sampling_params_validate_wants_finite_values_in_range():
    for bad in (
        dict(temperature=float("nan")),
        dict(temperature=float("inf")),
        dict(temperature=1e-300),
        dict(top_p=float("nan")),
        dict(repetition_penalty=float("nan")),
        dict(repetition_penalty=float("inf")),
        dict(repetition_penalty=1e-300),
        dict(repetition_penalty=1e300),
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            SamplingParams(**bad).validate()
    SamplingParams(temperature=0, repetition_penalty=1.3, top_p=0.5, top_k=1).validate()


# ---- finding 3: work for clients that hung up -------------------------------------------------------------
def test_non_streaming_requests_of_clients_that_hung_up_are_cancelled(lm):
    app = create_app(lm, api_key="", max_tokens_limit=500)
    batcher, n = app.state.batcher, 6
    with serving(app) as port:
        gate = threading.Event()
        batcher.submit(CallJob(gate.wait))  # the worker is busy: the requests queue up behind it
        clients = []
        try:
            for i in range(n):
                client = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
                body = json.dumps({"prompt": f"alice {i}", "max_tokens": 40, "temperature": 0.7}).encode()
                client.sendall(
                    b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                clients.append(client)
            assert until(lambda: batcher.pending() == n)
            for client in clients:  # every client hangs up before its answer
                client.close()
            assert until(lambda: batcher.stats.cancelled == n)  # the server noticed each disconnect
        finally:
            gate.set()
        conn = Conn(port)
        status, body = conn.request("POST", COMPLETIONS, {**GOOD, "max_tokens": 5})
        assert status == 200
        conn.close()
        assert until(
            lambda: metric(port, 'lmforge_requests_total{endpoint="/v1/completions",status="499"}') == n
        )
        # Only the last request was decoded: nothing was generated for the clients that had gone.
        assert metric(port, "lmforge_generated_tokens_total") == body["usage"]["completion_tokens"]
        assert metric(port, "lmforge_cancelled_requests_total") == n


def test_a_cancelled_row_is_dropped_from_its_running_batch(lm, monkeypatch):
    prompts = ["alice ", "bob meets", "carol "]
    jobs = [GenerateJob(p, lm.prompt_ids(p), SamplingParams(30, temperature=0), []) for p in prompts]
    rows_per_pass, forward = [], lm.model.forward

    def counting_forward(x, *args, **kwargs):
        rows_per_pass.append(x.shape[0])
        if len(rows_per_pass) == 5:  # mid-decode, the second client hangs up
            jobs[1].cancelled.set()
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(lm.model, "forward", counting_forward)
    stats = BatchStats()
    done = decode_batch(lm, jobs, stats)
    monkeypatch.undo()
    assert stats.dropped_rows == 1
    assert rows_per_pass[:5] == [3] * 5 and set(rows_per_pass[5:]) == {2}  # the batch went on without it
    assert done[1].completion_tokens < 30
    for i in (0, 2):  # the others continue exactly as they would alone
        assert done[i].text == lm.generate(prompts[i], max_new_tokens=30, temperature=0)


# ---- finding 4: the event loop, slow bodies, idle connections ---------------------------------------------
def test_a_huge_prompt_is_refused_without_tokenizing_it(app, port, lm, monkeypatch):
    calls = []
    encode = lm.tokenizer.encode
    monkeypatch.setattr(lm.tokenizer, "encode", lambda text: calls.append(len(text)) or encode(text))
    conn = Conn(port)
    status, error = conn.request("POST", COMPLETIONS, {"prompt": "alice " * 150_000, "max_tokens": 2})
    assert status == 400 and error["error"]["code"] == "context_length_exceeded"
    assert calls == []  # refused by its length in characters
    assert conn.request("POST", COMPLETIONS, GOOD)[0] == 200 and calls  # a normal prompt is tokenized
    conn.close()


def test_tokenizing_runs_off_the_event_loop(app, port, lm, monkeypatch):
    """While a prompt is being tokenized (here: held in the tokenizer), /health still answers."""
    entered, release = threading.Event(), threading.Event()
    prompt_ids = lm.prompt_ids

    def slow_prompt_ids(prompt):
        entered.set()
        release.wait(WAIT)
        return prompt_ids(prompt)

    monkeypatch.setattr(lm, "prompt_ids", slow_prompt_ids)
    result = {}

    def complete():
        conn = Conn(port)
        result["status"] = conn.request("POST", COMPLETIONS, GOOD)[0]
        conn.close()

    worker = threading.Thread(target=complete)
    worker.start()
    try:
        assert entered.wait(WAIT)
        probe = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # generous: it answers at once
        probe.request("GET", "/health")
        assert probe.getresponse().status == 200
        probe.close()
    finally:
        release.set()
        worker.join(WAIT)
    assert result["status"] == 200


def test_a_body_that_never_finishes_gets_408_and_the_connection_closes(port):
    client = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    client.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"prompt": '
    )
    received = b""
    while chunk := client.recv(65536):  # until the server closes the connection
        received += chunk
    client.close()
    assert received.startswith(b"HTTP/1.1 408") and b"request_timeout" in received


def test_a_body_over_the_limit_is_read_before_the_413(app, port):
    """The server used to answer 413 and close with the body unread: the close reset the connection, and the client
    (still sending) saw a reset instead of the answer."""
    body = b'{"prompt": "' + b"a" * (2 * app.state.max_body_bytes) + b'"}'
    for _ in range(3):
        client = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        head = f"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n\r\n"
        client.sendall(head.encode() + body)
        received = b""
        while chunk := client.recv(65536):
            received += chunk
        client.close()
        assert received.startswith(b"HTTP/1.1 413") and b"request_too_large" in received


@pytest.mark.parametrize("head", [b"", b"GET /health HTTP/1.1\r\nHost: loc"], ids=["nothing", "half a head"])
def test_a_request_head_that_never_finishes_is_dropped(port, head):
    """uvicorn's own idle timer never runs before a first request and stops at any byte: a client that sent
    nothing, or trickled its headers, was held open forever (slowloris)."""
    client = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    client.sendall(head)
    received = b""
    while chunk := client.recv(65536):  # returns b"" once the server closes the connection
        received += chunk
    client.close()
    assert received == b""


def test_an_idle_keep_alive_connection_is_closed(app, port):
    assert server_config(app).timeout_keep_alive == 0.5  # what `lmforge serve` hands to uvicorn
    client = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    client.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    received = b""
    while chunk := client.recv(65536):  # the answer, then the server closes the idle connection
        received += chunk
    client.close()
    assert received.startswith(b"HTTP/1.1 200") and received.count(b"HTTP/1.1") == 1


# ---- finding 6: bad `lmforge serve` flags ---------------------------------------------------------------
@pytest.mark.parametrize(
    "flag,value",
    [
        ("--timeout", "nan"),
        ("--timeout", "inf"),
        ("--timeout", "0"),
        ("--batch-window-ms", "-5"),
        ("--batch-window-ms", "nan"),
        ("--body-timeout", "nan"),
        ("--keep-alive-timeout", "-1"),
    ],
)
def test_serve_refuses_bad_flags_in_one_line(ckpt, capsys, monkeypatch, flag, value):
    def never(*args, **kwargs):
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn.Server, "run", never)
    monkeypatch.setattr(uvicorn, "run", never)
    assert main(["serve", str(ckpt), flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and flag in err[0]


def test_serve_hands_its_settings_to_uvicorn(ckpt, monkeypatch, capsys):
    started = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **k: started.append(self.config))
    argv = ["serve", str(ckpt), "--keep-alive-timeout", "7", "--allowed-hosts", "my.lan,other.lan"]
    assert main(argv) == 0
    (config,) = started
    assert config.timeout_keep_alive == 7 and config.host == "127.0.0.1"
    from fastapi.testclient import TestClient

    with TestClient(config.app, base_url="http://my.lan:8000") as c:  # allowed: the check applies everywhere
        assert c.get("/health").status_code == 200
        assert c.get("/health", headers={"Host": "evil.example"}).status_code == 400


# ---- finding 7: /metrics and the Host header ---------------------------------------------------------------
def test_metrics_need_the_api_key_when_one_is_set(lm):
    with serving(create_app(lm, api_key="s3cret")) as port:
        conn = Conn(port)
        status, error = conn.request("GET", "/metrics")
        assert status == 401 and error["error"]["code"] == "invalid_api_key"
        status, text = conn.request("GET", "/metrics", headers={"Authorization": "Bearer s3cret"})
        assert status == 200 and "lmforge_requests_total" in text
        assert conn.request("GET", "/health")[0] == 200  # probes stay open
        conn.close()


@pytest.mark.parametrize(
    "host,allowed",
    [
        ("localhost:8000", True),
        ("LOCALHOST", True),
        ("127.0.0.1:1234", True),
        ("[::1]:8000", True),
        ("evil.example", False),
        ("evil.example:8000", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.nip.io", False),
    ],
)
def test_a_loopback_server_answers_only_to_loopback_host_names(port, host, allowed):
    conn = Conn(port)
    status, body = conn.request("GET", "/health", headers={"Host": host})
    if allowed:
        assert status == 200
    else:
        assert status == 400 and body["error"]["code"] == "host_not_allowed"
        assert "--allowed-hosts" in body["error"]["message"]
    assert conn.request("GET", "/health")[0] == 200  # the connection stays usable
    conn.close()


def test_allowed_hosts_extend_the_loopback_names(lm):
    with serving(create_app(lm, api_key="", allowed_hosts=["my.lan"])) as port:
        conn = Conn(port)
        assert conn.request("GET", "/health", headers={"Host": "my.lan:8000"})[0] == 200
        assert conn.request("GET", "/health", headers={"Host": "localhost"})[0] == 200
        assert conn.request("GET", "/health", headers={"Host": "other.lan"})[0] == 400
        conn.close()
    with serving(create_app(lm, api_key="", allowed_hosts=["*"])) as port:
        conn = Conn(port)
        assert conn.request("GET", "/health", headers={"Host": "anything.example"})[0] == 200
        conn.close()
