"""`serve --compile true`: the decoding step compiles in a background thread from the start, requests decode
eagerly meanwhile (the first one does not wait for the compile), and /health says when it is compiled."""

import time

from fastapi.testclient import TestClient

from lmforge.serve import create_app
from tests.serve.test_attention_endpoint import random_checkpoint

BODY = {"prompt": "alice sees", "max_tokens": 8, "temperature": 0}


def test_a_compiled_server_answers_at_once_and_compiles_in_the_background(tmp_path):
    ckpt = random_checkpoint(tmp_path, "gpt")
    with TestClient(create_app(str(ckpt), api_key="")) as c:
        assert c.get("/health").json()["decoding"] == "eager"
        eager = c.post("/v1/completions", json=BODY).json()["choices"][0]["text"]
    with TestClient(create_app(str(ckpt), api_key="", compile="true")) as c:
        assert c.get("/health").json()["decoding"] == "compiling"  # started with the server
        first = c.post("/v1/completions", json=BODY).json()["choices"][0]["text"]
        deadline = time.monotonic() + 600
        while c.get("/health").json()["decoding"] == "compiling" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert c.get("/health").json()["decoding"] == "compiled"
        later = c.post("/v1/completions", json=BODY).json()["choices"][0]["text"]
    assert first == eager and later == eager
