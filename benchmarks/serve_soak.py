"""Soak test of `lmforge serve`: many clients for minutes, normal, streamed, abusive and abandoned requests.

    .venv/bin/python benchmarks/serve_soak.py [--ckpt CKPT] [--clients 32] [--minutes 3]
    .venv/bin/python benchmarks/serve_soak.py --quick       # smoke test: 20 s, 8 clients (~35 s in all)

Starts `python -m lmforge serve CKPT` as a subprocess (a real uvicorn on a free loopback port, with an API key
that every request of this script sends; --server-args adds options). Without --ckpt it first builds a random
(untrained) GPT checkpoint with a character tokenizer, as benchmarks/serve_load.py does: no download. Then:

1. Soak: N client tasks send requests back to back for M minutes, each picking a kind at random (weights in
   `kinds()`) and the kind's variants in turn:
   - normal: completions and chat completions (non-streaming), streamed ones of both read to `data: [DONE]`
     (a keep-alive connection pool);
   - abusive (a new connection each): bad JSON, huge numbers (seed 2**64, ...), NaN / 1e-300 / inf sampling
     floats, lone surrogates, over-long prompts and bodies, unknown fields, wrong types, bad Host headers;
   - after_abuse_same_connection: an abusive request, then a normal completion on the same keep-alive
     connection (does the abuse break the connection for what follows?);
   - abandoned: non-streaming requests whose client closes the socket after --abandon-after s (0.3), streams
     dropped after --abandon-events events; both ask for --abandon-max-tokens tokens.
   Besides the N clients, clients/8 slowloris tasks each keep one unfinished request open (a body that
   stops, a body sent a byte every 2 s, headers sent a line every 2 s) until the server answers or drops it,
   then open the next; a prober GETs /health every 0.25 s; the server's RSS, open fds and CPU time are
   sampled every --rss-interval s from /proc/PID/status and /proc/PID/stat (psutil is not installed).
2. Abandoned-request windows: serve/metrics.py has generated_tokens_total and cancelled_requests_total but no
   per-request counter for abandoned requests, so after the soak, once the server is idle, a window sends only
   abandoned requests (non-streaming, then streaming) and reads generated_tokens_total before and after; the
   same request read to the end gives the tokens each would cost. Idle: a probe request with sampling settings
   of its own (never batched with others; the worker is first-in first-out) has come back and the counter has
   stopped moving. The soak itself also reports the tokens the server generated minus those in the responses
   the clients read (abandoned, failed and timed-out requests together).

Each request is classified per kind: 2xx; 2xx_unexpected (an abusive request the server should have refused);
4xx_expected / 4xx_unexpected (by the statuses each variant may get); 5xx; stream_error_event (a 200 stream
that carried an error event); stream_incomplete; connection_error (reset, refused, closed without an answer);
timeout (the client gave up; for slowloris: the server kept the unfinished request open for
--slowloris-max-hold s); closed_by_server (slowloris: the server dropped it, as it should); open_at_end
(slowloris: cut short by the end of the soak, no verdict); abandoned (the client left, as planned).
"problems" counts the bad classes per kind/variant, with one example each.

The load generator is one asyncio thread at nice +10 (--nice) in this process, the server runs at nice 0,
so on a 2-core machine the clients take CPU only when the server leaves some; the output gives both processes'
CPU time. Client-side latencies include this process's own scheduling delay. Prints one JSON document;
RESULTS.md records figures with their command, date, commit and CPU: the output's "command" and "machine".
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import re
import resource
import secrets
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
LETTERS = "abcdefghijklmnopqrstuvwxyz "
GOOD = {"2xx", "4xx_expected", "closed_by_server", "abandoned", "open_at_end"}
BAD_JSON_CODES = frozenset({400, 415, 422})
INVALID = frozenset({400, 422})
TOO_LONG = frozenset({400, 413, 422})
BAD_HOST = frozenset({400, 403, 421, 431})
SLOW = frozenset({400, 408, 413})


# ---- what the clients send ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One way to send a request. `body(ctx, rng)` gives the JSON body (modes json, stream, abandon*) or the
    whole raw HTTP request (mode raw). `codes`: the 4xx statuses that are a right answer; `accept_2xx`:
    whether a 2xx is one too (False: the server should refuse this request)."""

    name: str
    mode: str  # json | stream | raw | slowloris | abandon | abandon_stream
    body: Callable = lambda ctx, rng: b""
    path: str = "/v1/completions"
    headers: tuple = ()
    codes: frozenset = frozenset()
    accept_2xx: bool = True


def js(obj) -> bytes:
    return json.dumps(obj).encode()


def const(data: bytes | str) -> Callable:
    data = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    return lambda ctx, rng: data


def words(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(n)).strip() or "a"


def sampling(rng: random.Random, max_tokens: int) -> dict:
    out = {"max_tokens": rng.randint(4, max_tokens), "temperature": rng.choice([0, 0, 0.7, 1.0])}
    if rng.random() < 0.2:
        out["seed"] = rng.randint(0, 2**31)
    return out


def completion(stream: bool) -> Callable:
    def body(ctx, rng):
        extra = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
        return js({"prompt": words(rng, rng.randint(4, 40)), **sampling(rng, ctx.args.max_tokens), **extra})

    return body


def chat(stream: bool) -> Callable:
    def body(ctx, rng):
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": words(rng, 30)}]
        extra = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
        return js({"messages": messages, **sampling(rng, ctx.args.max_tokens), **extra})

    return body


def abandon_body(stream: bool, temperature: float | None = None) -> Callable:
    def body(ctx, rng):
        t = rng.choice([0, 0.7]) if temperature is None else temperature
        return js(
            {"prompt": "hello", "max_tokens": ctx.args.abandon_max_tokens, "temperature": t, "stream": stream}
        )

    return body


def raw_request(method: str, path: str, host: str | None, body: bytes = b"", headers: tuple = ()) -> bytes:
    lines = [f"{method} {path} HTTP/1.1"] + ([f"Host: {host}"] if host is not None else [])
    lines += [f"{k}: {v}" for k, v in headers] + ["Connection: close"]
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


def raw(method: str, path: str, host: Callable | None, body: bytes = b"") -> Callable:
    return lambda ctx, rng: raw_request(
        method, path, None if host is None else host(ctx), body, (("Authorization", f"Bearer {ctx.key}"),)
    )


def kinds() -> dict[str, tuple[float, list[Variant]]]:
    """kind: (weight, variants). A client picks a kind at random by weight, then the kind's next variant."""
    hi = '{"prompt": "hello", '
    deep = b"[" * 100_000 + b"]" * 100_000
    return {
        # normal
        "completion": (20, [Variant("completion", "json", completion(False))]),
        "chat": (12, [Variant("chat", "json", chat(False), "/v1/chat/completions")]),
        "stream_completion": (8, [Variant("stream", "stream", completion(True))]),
        "stream_chat": (6, [Variant("stream", "stream", chat(True), "/v1/chat/completions")]),
        # abandoned
        "abandoned": (6, [Variant("after_timeout", "abandon", abandon_body(False))]),
        "abandoned_stream": (6, [Variant("mid_stream", "abandon_stream", abandon_body(True))]),
        # abusive
        "bad_json": (
            3,
            [
                Variant(name, "json", const(data), codes=BAD_JSON_CODES, accept_2xx=False)
                for name, data in [
                    ("truncated", b'{"prompt": "hel'),
                    ("trailing_comma", b'{"prompt": "hello",}'),
                    ("not_json", b"prompt=hello"),
                    ("empty", b""),
                    ("deep_nesting_100k", deep),
                    ("invalid_utf8", b'{"prompt": "\xff\xfe hello"}'),
                ]
            ]
            + [
                Variant(
                    "text_plain_content_type",
                    "json",
                    const(b'{"prompt": "hello"}'),
                    headers=(("Content-Type", "text/plain"),),
                    codes=BAD_JSON_CODES,
                )
            ],
        ),
        "huge_numbers": (
            3,
            [
                Variant(
                    "seed_2**64_greedy",
                    "json",
                    const(hi + f'"seed": {2**64}, "temperature": 0}}'),
                    codes=INVALID,
                ),
                Variant(
                    "seed_2**64", "json", const(hi + f'"seed": {2**64}, "temperature": 0.8}}'), codes=INVALID
                ),
                Variant(
                    "seed_-2**70",
                    "json",
                    const(hi + f'"seed": {-(2**70)}, "temperature": 0.8}}'),
                    codes=INVALID,
                ),
                Variant("max_tokens_2**64", "json", const(hi + f'"max_tokens": {2**64}}}'), codes=INVALID),
                Variant("max_tokens_1e20", "json", const(hi + '"max_tokens": 1e20}'), codes=INVALID),
                Variant("top_k_2**64", "json", const(hi + f'"top_k": {2**64}}}'), codes=INVALID),
                Variant("temperature_1e309", "json", const(hi + '"temperature": 1e309}'), codes=INVALID),
                Variant("prompt_list_10k", "json", const(js({"prompt": ["a"] * 10_000})), codes=INVALID),
            ],
        ),
        "nan_tiny_floats": (
            3,
            [
                Variant(name, mode, const(hi + text), codes=INVALID, accept_2xx=ok)
                for name, mode, text, ok in [
                    ("repetition_penalty_NaN", "json", '"repetition_penalty": NaN}', False),
                    (
                        "repetition_penalty_NaN_stream",
                        "stream",
                        '"repetition_penalty": NaN, "stream": true}',
                        False,
                    ),
                    ("repetition_penalty_1e-300", "json", '"repetition_penalty": 1e-300}', True),
                    ("repetition_penalty_Infinity", "json", '"repetition_penalty": Infinity}', False),
                    ("temperature_NaN", "json", '"temperature": NaN}', False),
                    ("temperature_1e-300", "json", '"temperature": 1e-300}', True),
                    ("top_p_1e-300", "json", '"top_p": 1e-300}', True),
                    ("top_p_NaN", "json", '"top_p": NaN}', False),
                ]
            ],
        ),
        "lone_surrogates": (
            3,
            [
                Variant("prompt_escaped", "json", const('{"prompt": "\\ud800abc"}'), codes=INVALID),
                Variant("prompt_cesu_bytes", "json", const('{"prompt": "\ud800abc"}'), codes=INVALID),
                Variant("stop", "json", const('{"prompt": "hi", "stop": "\\udc00"}'), codes=INVALID),
                Variant(
                    "chat_content",
                    "json",
                    const('{"messages": [{"role": "user", "content": "x\\udfff"}]}'),
                    "/v1/chat/completions",
                    codes=INVALID,
                ),
                Variant(
                    "chat_stream",
                    "stream",
                    const('{"messages": [{"role": "user", "content": "\\ud83d"}], "stream": true}'),
                    "/v1/chat/completions",
                    codes=INVALID,
                ),
            ],
        ),
        "overlong": (
            3,
            [
                Variant("prompt_50k_chars", "json", const(js({"prompt": "a b " * 12_500})), codes=TOO_LONG),
                Variant(
                    "prompt_900k_chars",
                    "json",
                    const(js({"prompt": "ab " * 300_000})),
                    codes=TOO_LONG,
                    accept_2xx=False,
                ),
                Variant(
                    "body_2MiB",
                    "json",
                    const(js({"prompt": "a" * (2 << 20)})),
                    codes=TOO_LONG,
                    accept_2xx=False,
                ),
                Variant(
                    "chat_5000_messages",
                    "json",
                    const(js({"messages": [{"role": "user", "content": "hi there"}] * 5000})),
                    "/v1/chat/completions",
                    codes=TOO_LONG,
                ),
                Variant(
                    "stop_4x100k",
                    "json",
                    const(js({"prompt": "hi", "stop": ["z" * 100_000] * 4})),
                    codes=TOO_LONG,
                ),
            ],
        ),
        "unknown_fields": (
            2,
            [
                Variant(
                    "top_level",
                    "json",
                    const(
                        js(
                            {
                                "prompt": "hi",
                                "max_tokens": 8,
                                "frobnicate": {"a": [1, 2]},
                                "user": "u",
                                "logprobs": 2,
                            }
                        )
                    ),
                    codes=INVALID,
                ),
                Variant(
                    "in_message",
                    "json",
                    const(
                        js(
                            {
                                "messages": [{"role": "user", "content": "hi", "name": "bob", "x": 1}],
                                "max_tokens": 8,
                            }
                        )
                    ),
                    "/v1/chat/completions",
                    codes=INVALID,
                ),
                Variant(
                    "in_stream_options",
                    "stream",
                    const(
                        js({"prompt": "hi", "max_tokens": 8, "stream": True, "stream_options": {"zzz": 1}})
                    ),
                    codes=INVALID,
                ),
            ],
        ),
        "wrong_types": (
            3,
            [
                Variant(name, "json", const(js(body)), path, codes=INVALID, accept_2xx=False)
                for name, body, path in [
                    ("prompt_int", {"prompt": 123}, "/v1/completions"),
                    ("prompt_null", {"prompt": None}, "/v1/completions"),
                    ("prompt_token_ids", {"prompt": [1, 2, 3]}, "/v1/completions"),
                    ("max_tokens_str", {"prompt": "hi", "max_tokens": "ten"}, "/v1/completions"),
                    ("max_tokens_1.5", {"prompt": "hi", "max_tokens": 1.5}, "/v1/completions"),
                    ("temperature_list", {"prompt": "hi", "temperature": [1]}, "/v1/completions"),
                    ("stream_maybe", {"prompt": "hi", "stream": "maybe"}, "/v1/completions"),
                    ("stop_int", {"prompt": "hi", "stop": 5}, "/v1/completions"),
                    ("body_array", [1, 2], "/v1/completions"),
                    ("messages_str", {"messages": "hi"}, "/v1/chat/completions"),
                    ("role_int", {"messages": [{"role": 1, "content": "hi"}]}, "/v1/chat/completions"),
                    (
                        "image_part",
                        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
                        "/v1/chat/completions",
                    ),
                ]
            ],
        ),
        # a normal completion right after an abusive request on the same keep-alive connection
        "after_abuse_same_connection": (3, [Variant("pair", "pair")]),
        "bad_host": (
            2,
            [
                Variant(
                    "evil_host_health",
                    "raw",
                    raw("GET", "/health", lambda c: "evil.example"),
                    codes=BAD_HOST,
                    accept_2xx=False,
                ),
                Variant(
                    "evil_host_completion",
                    "raw",
                    raw(
                        "POST",
                        "/v1/completions",
                        lambda c: f"evil.example:{c.port}",
                        js({"prompt": "hi", "max_tokens": 4}),
                    ),
                    codes=BAD_HOST,
                    accept_2xx=False,
                ),
                Variant("no_host", "raw", raw("GET", "/health", None), codes=BAD_HOST, accept_2xx=False),
                Variant(
                    "host_10k_chars",
                    "raw",
                    raw("GET", "/health", lambda c: "a" * 10_000),
                    codes=BAD_HOST,
                    accept_2xx=False,
                ),
                Variant(
                    "host_control_char",
                    "raw",
                    raw("GET", "/health", lambda c: "evil\x7f.example"),
                    codes=BAD_HOST,
                    accept_2xx=False,
                ),
            ],
        ),
    }


PLAIN = Variant("plain", "json")
NEXT = Variant("completion", "json", completion(False))
SLOWLORIS = [
    Variant(name, "slowloris", codes=SLOW) for name in ("body_stall", "body_trickle", "headers_trickle")
]
NORMAL = ("completion", "chat", "stream_completion", "stream_chat")


# ---- results -----------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    cls: str
    seconds: float
    ttft: float | None = None
    tokens: int = 0
    detail: str = ""


@dataclass
class Tally:
    kinds: dict = field(
        default_factory=lambda: defaultdict(lambda: {"classes": Counter(), "lat": [], "ttft": []})
    )
    problems: dict = field(default_factory=lambda: defaultdict(dict))
    tokens_read: int = 0

    def add(self, kind: str, variant: str, o: Outcome) -> None:
        k = self.kinds[kind]
        k["classes"][o.cls] += 1
        k["lat"].append(o.seconds)
        if o.ttft is not None:
            k["ttft"].append(o.ttft)
        self.tokens_read += o.tokens
        if o.cls not in GOOD:
            p = self.problems[f"{kind}/{variant}"].setdefault(o.cls, {"count": 0, "example": o.detail[:240]})
            p["count"] += 1

    def report(self) -> dict:
        out = {}
        for kind, k in sorted(self.kinds.items()):
            out[kind] = {"requests": sum(k["classes"].values()), **dict(sorted(k["classes"].items()))}
            out[kind].update(percentiles(k["lat"], "latency"))
            if k["ttft"]:
                out[kind].update(percentiles(k["ttft"], "first_token"))
        return out


def percentiles(xs: list[float], name: str) -> dict:
    if not xs:
        return {}
    q = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) > 1 else [xs[0]] * 99
    return {f"{name}_p50_ms": round(q[49] * 1000, 1), f"{name}_p95_ms": round(q[94] * 1000, 1)}


def classify(status: int | None, v: Variant) -> str:
    if status is None:
        return "connection_error"
    if 200 <= status < 300:
        return "2xx" if v.accept_2xx else "2xx_unexpected"
    if 400 <= status < 500:
        return "4xx_expected" if status in v.codes else "4xx_unexpected"
    return "5xx" if status >= 500 else "other"


def error_message(text: str) -> str:
    try:
        return str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text[:200]


# ---- sending -----------------------------------------------------------------------------------------------
@dataclass
class Ctx:
    args: argparse.Namespace
    port: int
    key: str
    http: httpx.AsyncClient  # normal requests: a keep-alive pool
    abuse: httpx.AsyncClient | None = None  # abusive ones: a new connection each (no keep-alive)
    deadline: float = 0.0
    turns: Counter = field(default_factory=Counter)

    def next_variant(self, kind: str, variants: list) -> Variant:
        """The variants of a kind in turn, so that a short run still sends each of them."""
        self.turns[kind] += 1
        return variants[(self.turns[kind] - 1) % len(variants)]

    @property
    def auth(self) -> tuple:
        return (("Authorization", f"Bearer {self.key}"),)


async def send(ctx: Ctx, v: Variant, rng: random.Random, http: httpx.AsyncClient | None = None) -> Outcome:
    start = time.perf_counter()
    http = http or ctx.http
    try:
        if v.mode == "json":
            return await send_json(http, v, ctx, rng, start)
        if v.mode == "stream":
            return await send_stream(http, v, ctx, rng, start)
        if v.mode == "raw":
            status, data = await raw_exchange(ctx, v.body(ctx, rng), 60)
            text = data.partition(b"\r\n\r\n")[2].decode("utf-8", "replace")
            return Outcome(
                classify(status, v), time.perf_counter() - start, detail=f"{status}: {error_message(text)}"
            )
        if v.mode == "slowloris":
            return await slowloris(ctx, v, start)
        if v.mode in ("abandon", "abandon_stream"):
            return await abandon(ctx, v.body(ctx, rng), v.mode == "abandon_stream", start)
        raise ValueError(v.mode)
    except (httpx.TimeoutException, asyncio.TimeoutError) as exc:
        return Outcome("timeout", time.perf_counter() - start, detail=type(exc).__name__)
    except (httpx.TransportError, OSError) as exc:
        return Outcome("connection_error", time.perf_counter() - start, detail=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - e.g. a malformed stream event: counted, never fatal
        return Outcome("other", time.perf_counter() - start, detail=f"{type(exc).__name__}: {exc}")


async def send_json(http: httpx.AsyncClient, v: Variant, ctx: Ctx, rng, start: float) -> Outcome:
    headers = {"Content-Type": "application/json", **dict(v.headers)}
    r = await http.post(v.path, content=v.body(ctx, rng), headers=headers)
    tokens = 0
    if r.is_success:
        try:
            tokens = int(r.json()["usage"]["completion_tokens"])
        except (ValueError, KeyError, TypeError):
            pass
    detail = f"{r.status_code}: {error_message(r.text)}"
    return Outcome(classify(r.status_code, v), time.perf_counter() - start, tokens=tokens, detail=detail)


async def send_stream(http: httpx.AsyncClient, v: Variant, ctx: Ctx, rng, start: float) -> Outcome:
    headers = {"Content-Type": "application/json", **dict(v.headers)}
    first, done, error, tokens = None, False, None, 0
    async with http.stream("POST", v.path, content=v.body(ctx, rng), headers=headers) as r:
        if r.status_code != 200:
            text = (await r.aread()).decode("utf-8", "replace")
            return Outcome(
                classify(r.status_code, v),
                time.perf_counter() - start,
                detail=f"{r.status_code}: {error_message(text)}",
            )
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            event = json.loads(line[6:])
            choice = (event.get("choices") or [{}])[0]
            if first is None and (choice.get("text") or (choice.get("delta") or {}).get("content")):
                first = time.perf_counter() - start  # the first text (a chat stream starts with its role)
            if "error" in event:
                error = str(event["error"].get("message"))
            if event.get("usage"):
                tokens = int(event["usage"]["completion_tokens"])
    seconds = time.perf_counter() - start
    if error is not None:
        return Outcome("stream_error_event", seconds, first, detail=f"200 then error event: {error}")
    if not done:
        return Outcome("stream_incomplete", seconds, first, detail="200, ended without data: [DONE]")
    return Outcome(classify(200, v), seconds, first, tokens, detail="200")


async def raw_exchange(ctx: Ctx, data: bytes, timeout: float) -> tuple[int | None, bytes]:
    """Send raw bytes and read the answer until the server closes (the request says Connection: close)."""
    reader, writer = await asyncio.open_connection(HOST, ctx.port)
    try:
        writer.write(data)
        await writer.drain()
        buf, end = b"", time.monotonic() + timeout
        while len(buf) < 1 << 20:
            chunk = await asyncio.wait_for(reader.read(65536), max(0.01, end - time.monotonic()))
            if not chunk:
                break
            buf += chunk
        return status_of(buf), buf
    finally:
        writer.close()


def status_of(data: bytes) -> int | None:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(m.group(1)) if m else None


async def slowloris(ctx: Ctx, v: Variant, start: float) -> Outcome:
    """An unfinished request held open until the server answers or drops it, or the soak (or the cap) ends."""
    body = b'{"prompt": "' + b"a" * 32
    if v.name == "headers_trickle":
        first, trickle = (
            f"POST /v1/completions HTTP/1.1\r\nHost: {HOST}:{ctx.port}\r\n".encode(),
            b"X-A: b\r\n",
        )
    else:
        head = raw_request("POST", "/v1/completions", f"{HOST}:{ctx.port}", b"", ctx.auth)
        first = head.replace(b"Content-Length: 0", b"Content-Length: 4096") + body
        trickle = b"a" if v.name == "body_trickle" else b""
    capped = time.monotonic() + ctx.args.slowloris_max_hold <= ctx.deadline + 2
    until = min(ctx.deadline + 2, time.monotonic() + ctx.args.slowloris_max_hold)
    reader, writer = await asyncio.open_connection(HOST, ctx.port)
    try:
        writer.write(first)
        await writer.drain()
        while (left := until - time.monotonic()) > 0:
            try:
                data = await asyncio.wait_for(reader.read(65536), min(left, 2.0))
            except asyncio.TimeoutError:
                if trickle:
                    writer.write(trickle)
                    await writer.drain()
                continue
            seconds = time.perf_counter() - start
            if not data:
                return Outcome("closed_by_server", seconds, detail=f"dropped after {seconds:.1f} s")
            status = status_of(data)
            cls = classify(status, v) if status is not None else "other"
            return Outcome(cls, seconds, detail=f"{status} after {seconds:.1f} s")
    except (ConnectionError, BrokenPipeError) as exc:
        seconds = time.perf_counter() - start
        return Outcome("closed_by_server", seconds, detail=f"{type(exc).__name__} after {seconds:.1f} s")
    finally:
        writer.close()
    seconds = time.perf_counter() - start
    if not capped:  # the soak ended first: no verdict
        return Outcome("open_at_end", seconds, detail=f"still open after {seconds:.1f} s when the soak ended")
    return Outcome("timeout", seconds, detail=f"held open {seconds:.1f} s until the client gave up")


async def abandon(ctx: Ctx, body: bytes, stream: bool, start: float) -> Outcome:
    """A request whose client closes the socket: after --abandon-after s (non-streaming), or after
    --abandon-events events of a stream. A response that comes sooner is classified as any other."""
    reader, writer = await asyncio.open_connection(HOST, ctx.port)
    try:
        writer.write(raw_request("POST", "/v1/completions", f"{HOST}:{ctx.port}", body, ctx.auth))
        await writer.drain()
        buf = b""
        end = time.monotonic() + (60 if stream else ctx.args.abandon_after)
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except asyncio.TimeoutError:
                break
            if not chunk:  # the whole answer came before the client meant to leave
                status = status_of(buf)
                return Outcome(
                    classify(status, PLAIN), time.perf_counter() - start, detail=f"{status}: done early"
                )
            buf += chunk
            status = status_of(buf)
            if status is not None and status != 200:
                text = buf.partition(b"\r\n\r\n")[2].decode("utf-8", "replace")
                return Outcome(
                    classify(status, PLAIN),
                    time.perf_counter() - start,
                    detail=f"{status}: {error_message(text)}",
                )
            if stream and buf.count(b"data: ") >= ctx.args.abandon_events:
                break
        if stream and buf.count(b"data: ") < ctx.args.abandon_events:
            return Outcome("timeout", time.perf_counter() - start, detail="too few stream events in 60 s")
        return Outcome("abandoned", time.perf_counter() - start)
    finally:
        if ctx.args.abandon_rst:
            writer.transport.abort()
        else:
            writer.close()


# ---- the load ----------------------------------------------------------------------------------------------
async def client(ctx: Ctx, i: int, table: dict, tally: Tally) -> None:
    rng = random.Random(ctx.args.seed * 1000 + i)
    names = list(table)
    weights = [table[k][0] for k in names]
    abusive = [
        (kind, v)
        for kind in names
        if kind not in NORMAL
        for v in table[kind][1]
        if v.mode in ("json", "stream")
    ]
    random.Random(ctx.args.seed).shuffle(abusive)  # the same order in every client; ctx.turns spreads them
    pair = None  # this client's own one-connection pool, for "after_abuse_same_connection"
    try:
        while time.monotonic() < ctx.deadline:
            kind = rng.choices(names, weights)[0]
            if kind == "after_abuse_same_connection":
                pair = pair or client_pool(ctx.port, ctx.key, ctx.args.client_timeout, 1)
                first_kind, first = ctx.next_variant(kind, abusive)
                tally.add(first_kind, first.name, await send(ctx, first, rng, pair))
                tally.add(kind, f"after_{first_kind}/{first.name}", await send(ctx, NEXT, rng, pair))
            else:
                v = ctx.next_variant(kind, table[kind][1])
                tally.add(kind, v.name, await send(ctx, v, rng, None if kind in NORMAL else ctx.abuse))
            if ctx.args.think_ms:
                await asyncio.sleep(ctx.args.think_ms / 1000)
    finally:
        if pair is not None:
            await pair.aclose()


async def slowloris_client(ctx: Ctx, i: int, tally: Tally) -> None:
    """Unfinished requests one after the other, each held until the server drops it or the soak ends."""
    rng = random.Random(-i)
    while time.monotonic() < ctx.deadline - 1:
        v = ctx.next_variant("slowloris", SLOWLORIS)
        tally.add("slowloris", v.name, await send(ctx, v, rng))


def client_pool(
    port: int, key: str, timeout: float, connections: int, keepalive: bool = True
) -> httpx.AsyncClient:
    # A pooled connection idle for 2 s is dropped before uvicorn's 5 s keep-alive timeout closes it under us.
    limits = httpx.Limits(
        max_connections=connections,
        max_keepalive_connections=connections if keepalive else 0,
        keepalive_expiry=2.0,
    )
    return httpx.AsyncClient(
        base_url=f"http://{HOST}:{port}",
        timeout=httpx.Timeout(timeout, connect=10),
        limits=limits,
        headers={"Authorization": f"Bearer {key}"},
    )


async def prober(ctx: Ctx, tally: Tally, stop: asyncio.Event) -> None:
    """/health every 0.25 s on its own connection: how responsive the event loop stays under the load."""
    v = Variant("health", "json")
    async with httpx.AsyncClient(base_url=ctx.http.base_url, timeout=30, headers=dict(ctx.auth)) as http:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                r = await http.get("/health")
                o = Outcome(
                    classify(r.status_code, v), time.perf_counter() - start, detail=str(r.status_code)
                )
            except httpx.TimeoutException:
                o = Outcome("timeout", time.perf_counter() - start)
            except httpx.TransportError as exc:
                o = Outcome("connection_error", time.perf_counter() - start, detail=type(exc).__name__)
            tally.add("health", "health", o)
            try:
                await asyncio.wait_for(stop.wait(), 0.25)
            except asyncio.TimeoutError:
                pass


class ProcWatch:
    """RSS, peak RSS (VmHWM), open fds, threads and CPU seconds of the server process, from /proc."""

    def __init__(self, pid: int):
        self.pid, self.samples, self.t0 = pid, [], time.monotonic()

    def read(self) -> dict | None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return None
        kb = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+):\s+(\d+) kB", status, re.M)}
        threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))
        cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        return {
            "t": round(time.monotonic() - self.t0, 1),
            "rss_mb": round(kb.get("VmRSS", 0) / 1024, 1),
            "hwm_mb": round(kb.get("VmHWM", 0) / 1024, 1),
            "fds": fds,
            "threads": threads,
            "cpu_s": round(cpu, 2),
        }

    def sample(self) -> dict | None:
        s = self.read()
        if s is not None:
            self.samples.append(s)
        return s

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sample()
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except asyncio.TimeoutError:
                pass


# ---- the server's counters ---------------------------------------------------------------------------------
async def metrics(ctx: Ctx) -> dict:
    try:
        r = await ctx.http.get("/metrics")
    except httpx.HTTPError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if r.status_code != 200:
        return {"error": f"/metrics answered {r.status_code}"}
    out: dict = {"requests": defaultdict(dict)}
    for line in r.text.splitlines():
        if m := re.match(r'lmforge_requests_total\{endpoint="([^"]*)",status="(\d+)"\} (\d+)', line):
            out["requests"][m.group(1)][m.group(2)] = int(m.group(3))
        elif m := re.match(r"lmforge_(\w+) ([\d.]+)$", line):
            out[m.group(1)] = float(m.group(2))
    return out


def delta(after: dict, before: dict, name: str) -> int | None:
    if name in after and name in before:
        return int(after[name] - before[name])
    return None


async def wait_idle(ctx: Ctx) -> int:
    """Wait until the worker has finished what was queued; returns the tokens of the probe request itself.

    The probe's sampling settings (greedy, top_k 1) are unlike any other request's, so it is not batched with
    them, and the worker takes jobs first in, first out. Then wait for the token counter to stop moving."""
    body = {"prompt": "a", "max_tokens": 1, "temperature": 0, "top_k": 1}
    try:
        r = await ctx.http.post("/v1/completions", json=body, timeout=600)
        tokens = r.json()["usage"]["completion_tokens"] if r.status_code == 200 else 0
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        tokens = 0
    last = None
    for _ in range(60):
        m = await metrics(ctx)
        now = m.get("generated_tokens_total")
        if now is not None and now == last:
            break
        last = now
        await asyncio.sleep(0.5)
    return tokens


async def abandoned_window(ctx: Ctx, n: int, stream: bool) -> dict:
    """Only abandoned requests: the tokens they cost, against what the same requests cost read to the end."""
    await wait_idle(ctx)
    before = await metrics(ctx)
    body = abandon_body(stream, temperature=0)(ctx, None)
    outcomes = await asyncio.gather(*(abandon(ctx, body, stream, time.perf_counter()) for _ in range(n)))
    probe = await wait_idle(ctx)
    after = await metrics(ctx)
    try:
        reference = await ctx.http.post(
            "/v1/completions", json=json.loads(abandon_body(False, 0)(ctx, None)), timeout=600
        )
        per_request = reference.json()["usage"]["completion_tokens"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        per_request = None
    generated = delta(after, before, "generated_tokens_total")
    generated = None if generated is None else generated - probe
    full = None if per_request is None else n * per_request
    how = f"after {ctx.args.abandon_events} events" if stream else f"after {ctx.args.abandon_after:g} s"
    return {
        "requests": n,
        "client_left": how,
        "outcomes": dict(Counter(o.cls for o in outcomes)),
        "tokens_generated": generated,
        "tokens_if_read_to_end": full,
        "fraction_generated": None if not full or generated is None else round(generated / full, 3),
        "cancelled_requests_total_delta": delta(after, before, "cancelled_requests_total"),
        **({"metrics_error": after["error"]} if "error" in after else {}),
    }


# ---- the server --------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(ckpt: str, port: int, key: str, extra: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lmforge", "serve", ckpt, "--host", HOST, "--port", str(port)]
    cmd += ["--api-key", key, *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    end = time.monotonic() + 180
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"error: the server exited with code {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://{HOST}:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    sys.exit(f"error: the server did not answer /health in 180 s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def server_log_summary(log: Path) -> dict:
    text = log.read_text("utf-8", "replace")
    lines = text.splitlines()
    errors = [ln for ln in lines if ln.startswith("ERROR") or "Traceback" in ln]
    exceptions = Counter(
        ln.strip()[:160] for ln in lines if re.match(r"^\w+(\.\w+)*(Error|Exception|Exit)\b.*", ln.strip())
    )
    return {
        "log_lines": len(lines),
        "error_lines": len(errors),
        "tracebacks": text.count("Traceback (most recent call last)"),
        "exceptions": dict(exceptions.most_common(8)),
    }


def source() -> dict:
    """Where the served lmforge comes from, and whether its src/ differs from the commit machine() reports."""
    origin = Path(importlib.util.find_spec("lmforge").origin).parent
    out = {"lmforge_from": str(origin)}
    if origin.resolve() == (REPO / "src" / "lmforge").resolve():
        changed = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"], capture_output=True, text=True
        ).stdout.splitlines()
        out["uncommitted_src_files"] = len(changed)
    return out


# ---- main --------------------------------------------------------------------------------------------------
async def soak(args, port: int, key: str, proc: subprocess.Popen) -> dict:
    table = kinds()
    tally = Tally()
    watch = ProcWatch(proc.pid)
    watch.sample()  # the server as started, before any request
    http = client_pool(port, key, args.client_timeout, args.clients + 8)
    abuse = client_pool(port, key, args.client_timeout, args.clients + 8, keepalive=False)
    async with http, abuse:
        ctx = Ctx(args, port, key, http, abuse)
        await wait_idle(ctx)  # also warms the model up
        m0 = await metrics(ctx)
        stop = asyncio.Event()
        side = [
            asyncio.create_task(watch.run(args.rss_interval, stop)),
            asyncio.create_task(prober(ctx, tally, stop)),
        ]
        cpu0, server0 = resource.getrusage(resource.RUSAGE_SELF), watch.read()
        start = time.monotonic()
        ctx.deadline = start + args.seconds
        await asyncio.gather(
            *(client(ctx, i, table, tally) for i in range(args.clients)),
            *(slowloris_client(ctx, i, tally) for i in range(max(1, args.clients // 8))),
        )
        wall = time.monotonic() - start
        cpu1, server1 = resource.getrusage(resource.RUSAGE_SELF), watch.sample()
        if proc.poll() is None:
            probe = await wait_idle(ctx)
            m1 = await metrics(ctx)
            windows = {
                "non_streaming": await abandoned_window(ctx, args.abandon_window, False),
                "streaming": await abandoned_window(ctx, args.abandon_window, True),
            }
        else:
            probe, m1 = 0, {"error": f"the server exited with code {proc.returncode} during the soak"}
            windows = {"skipped": m1["error"]}
        stop.set()
        await asyncio.gather(*side)
        end = watch.sample()
    per_kind = tally.report()
    totals: Counter = Counter()
    for kind, row in per_kind.items():
        if kind != "health":
            totals.update({k: v for k, v in row.items() if k in CLASSES})
    generated = delta(m1, m0, "generated_tokens_total")
    generated = None if generated is None else generated - probe
    samples = watch.samples
    last = end or server1 or samples[-1]
    client_cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    server_cpu = (server1["cpu_s"] - server0["cpu_s"]) if server0 and server1 else None
    step = max(1, len(samples) // 40)
    n = sum(totals.values())
    return {
        "soak_seconds": round(wall, 1),
        "requests": n,
        "requests_per_s": round(n / wall, 1),
        "totals": dict(sorted(totals.items())),
        "per_kind": per_kind,
        "problems": {k: v for k, v in sorted(tally.problems.items())},
        "normal_latency": percentiles([x for k in NORMAL for x in tally.kinds[k]["lat"]], "latency"),
        "health_latency": percentiles(tally.kinds["health"]["lat"], "latency"),
        "tokens": {
            "server_generated_during_soak": generated,
            "in_responses_read_by_clients": tally.tokens_read,
            "not_delivered": None if generated is None else generated - tally.tokens_read,
            "note": "not_delivered: tokens generated for requests whose answers no client read (abandoned, "
            "failed, timed out) during the mixed soak; the windows below isolate abandoned requests",
            "cancelled_requests_total_delta": delta(m1, m0, "cancelled_requests_total"),
        },
        "abandoned_windows": windows,
        "server_counted_requests": m1.get("requests", m1.get("error")),
        "server_process": {
            "rss_mb_start": samples[0]["rss_mb"],
            "rss_mb_peak_sampled": max(s["rss_mb"] for s in samples),
            "rss_mb_peak_kernel_hwm": last["hwm_mb"],
            "rss_mb_end_of_soak": (server1 or {}).get("rss_mb"),
            "rss_mb_end": last["rss_mb"],
            "open_fds_start_peak_end": [samples[0]["fds"], max(s["fds"] for s in samples), last["fds"]],
            "threads_start_end": [samples[0]["threads"], last["threads"]],
            "samples_every_s": args.rss_interval,
            "rss_mb_by_second": {f"{s['t']:g}": s["rss_mb"] for s in samples[::step] + samples[-1:]},
        },
        "load_generator": {
            "how": f"one asyncio thread in this process at nice +{args.nice}, the server at nice 0, "
            f"{args.clients} closed-loop clients, {max(1, args.clients // 8)} slowloris connections at a "
            "time and a /health prober every 0.25 s",
            "cpu_seconds_during_soak": round(client_cpu, 1),
            "server_cpu_seconds_during_soak": None if server_cpu is None else round(server_cpu, 1),
            "cores": os.cpu_count(),
        },
    }


CLASSES = (
    "2xx",
    "2xx_unexpected",
    "4xx_expected",
    "4xx_unexpected",
    "5xx",
    "stream_error_event",
    "stream_incomplete",
    "connection_error",
    "timeout",
    "closed_by_server",
    "abandoned",
    "open_at_end",
    "other",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", help="checkpoint to serve (default: build a random GPT, --n-layer x --n-embd)")
    ap.add_argument("--clients", type=int, default=None, help="concurrent clients (default 32; --quick 8)")
    ap.add_argument("--minutes", type=float, default=None, help="soak time (default 3; --quick 1/3)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 20 s, 8 clients, 4-request windows")
    ap.add_argument("--max-tokens", type=int, default=32, help="most max_tokens of a normal request")
    ap.add_argument("--abandon-max-tokens", type=int, default=1000, help="max_tokens of an abandoned request")
    ap.add_argument("--abandon-after", type=float, default=0.3, help="seconds before a client abandons")
    ap.add_argument(
        "--abandon-events", type=int, default=5, help="stream events read before dropping a stream"
    )
    ap.add_argument(
        "--abandon-rst", action="store_true", help="abandon with a TCP reset instead of a normal close"
    )
    ap.add_argument(
        "--abandon-window", type=int, default=None, help="requests per abandoned window (8; quick 4)"
    )
    ap.add_argument(
        "--slowloris-max-hold", type=float, help="seconds a slowloris waits at most (60; quick 12)"
    )
    ap.add_argument("--client-timeout", type=float, default=120.0)
    ap.add_argument("--think-ms", type=float, default=0.0, help="pause of a client between its requests")
    ap.add_argument("--rss-interval", type=float, default=2.0, help="seconds between server RSS samples")
    ap.add_argument("--nice", type=int, default=10, help="niceness of the load generator (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--server-args", default="", help="more `lmforge serve` options, e.g. '--max-batch-size 16'"
    )
    ap.add_argument("--server-log", help="keep the server's output in this file (default: a temporary file)")
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--build-ckpt", help=argparse.SUPPRESS)  # internal: build the checkpoint in a subprocess
    args = ap.parse_args()
    if args.build_ckpt:  # torch stays out of the load generator's process
        from serve_load import make_checkpoint

        print(make_checkpoint(Path(args.build_ckpt), args.n_layer, args.n_embd))
        return
    args.clients = args.clients or (8 if args.quick else 32)
    args.seconds = 60 * (args.minutes if args.minutes is not None else (1 / 3 if args.quick else 3))
    args.abandon_window = args.abandon_window or (4 if args.quick else 8)
    args.slowloris_max_hold = args.slowloris_max_hold or (12.0 if args.quick else 60.0)

    with tempfile.TemporaryDirectory(prefix="serve-soak-") as tmp:
        ckpt = args.ckpt
        if ckpt is None:
            build = [sys.executable, __file__, "--build-ckpt", tmp, "--n-layer", str(args.n_layer)]
            done = subprocess.run([*build, "--n-embd", str(args.n_embd)], capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"error: building the checkpoint failed:\n{done.stderr[-3000:]}")
            ckpt = done.stdout.strip().splitlines()[-1]
        port, key = free_port(), "soak-" + secrets.token_hex(8)
        log = Path(args.server_log or Path(tmp) / "server.log")
        proc = start_server(ckpt, port, key, shlex.split(args.server_args), log)
        try:
            if args.nice:
                os.nice(args.nice)  # after starting the server, which must not inherit it
            run = asyncio.run(soak(args, port, key, proc))
        finally:
            code = stop_server(proc)
        server_log = server_log_summary(log)

    from common import emit, machine

    emit(
        {
            "benchmark": "serve_soak",
            "command": " ".join(["python", "benchmarks/serve_soak.py", *sys.argv[1:]]),
            "machine": machine(),
            "server": {
                "ckpt": args.ckpt or f"random gpt {args.n_layer}x{args.n_embd}, char tokenizer (built)",
                "args": args.server_args,
                **source(),
                "exit_code": code,
                **server_log,
            },
            "clients": args.clients,
            "max_tokens": args.max_tokens,
            "abandon_max_tokens": args.abandon_max_tokens,
            **run,
        }
    )


if __name__ == "__main__":
    main()
