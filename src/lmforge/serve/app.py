"""`create_app(CKPT)`: an OpenAI-compatible HTTP server for one checkpoint (FastAPI).

A generative LM serves `/v1/completions` and `/v1/chat/completions` (both with `stream: true` as server-sent events
in OpenAI's chunk format, ending with `data: [DONE]`). Fine-tuned task models serve their task's endpoint (see
serve/tasks.py): a classifier `/v1/classify`, an NER tagger `/v1/ner`, a question-answering model `/v1/qa`, an
encoder-decoder `/v1/translate` (a summarizer `/v1/summarize`). GPT and BERT-style checkpoints, and classifiers' and
taggers' backbones, also serve OpenAI's `/v1/embeddings`. An endpoint the model does not serve answers 400 saying
what it serves. Every server has `/v1/models`, `/health`, a Prometheus `/metrics` and a playground page at `/`.

Chat messages become one plain-text prompt. A checkpoint whose config.json carries a `chat_template` (a Jinja
template in Hugging Face's convention: `messages`, `add_generation_prompt`) is rendered with it; otherwise with
the simple template

    System: …
    User: …
    Assistant: …
    Assistant:

and generation also stops before the model starts a new "\\nUser:" or "\\nSystem:" turn.

The completion routes speak the rest of OpenAI's protocol: `n` choices (seeded choice k samples with seed + k),
`logprobs` (completions: the legacy object of tokens, token_logprobs, top_logprobs and text_offset; chat:
`logprobs: true` and `top_logprobs`), `echo` with the prompt's own logprobs (the first token's is null; max_tokens 0
scores a prompt without continuing it), prompts given as token ids, `presence_penalty` / `frequency_penalty`
(over the tokens generated so far), `logit_bias` and `seed`. Logprobs are the model's own distribution, before
temperature, penalties and bias. A field the server does not implement (`tools`, `functions`, `response_format`
other than text, `suffix`, `best_of` other than n, or any unknown name) is a 400 naming it, never ignored; only
`user`, `metadata` and a few such bookkeeping fields are accepted and ignored. vLLM's `/tokenizer_info`,
`/tokenize` and `/detokenize` let lm-evaluation-harness's `local-completions` tokenize with the model's tokenizer.

Any `model` name in a request is accepted: the server has one model. Errors use OpenAI's shape
`{"error": {"message", "type", "code", "param"}}`; a request the server cannot serve is a 4xx, never a 500, and
the connection stays usable after any error. Every number and text of a request is checked at the edge (NaN,
infinity, out-of-range seeds and lone surrogates are 400s).

What protects the server: a request body over `max_body_bytes` is refused (413) and one that takes more than
`body_timeout` seconds to arrive is answered 408; a prompt too long for the context is refused by its length
in characters before it is tokenized, and tokenizing and chat templates run in a thread pool, off the event
loop; a non-streaming request whose client hangs up is cancelled (the batcher drops its rows), as a dropped
stream is. On a connection that arrives on a loopback address only the Host names localhost, 127.0.0.1 and [::1]
(and `allowed_hosts`) are served, so a web page that rebinds its DNS name to 127.0.0.1 cannot reach the server;
/metrics, like /v1/*, needs the API key when one is set. `server_config` adds uvicorn's settings (the idle
keep-alive timeout).

This module loads what the checkpoint serves (`load_served`), owns the generation routes, the error handlers and
the middleware, and assembles the app. The task and embedding routes are serve/tasks.py's; what every route shares
(request body base, errors, `Served`, limits) is serve/protocol.py's; decoding runs in serve/batching.py's worker.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import math
import os
import time
import uuid
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, StreamingResponse
from pydantic import ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.checkpoint import read_config, resolve_checkpoint
from lmforge.errors import ConfigError, LmforgeError
from lmforge.extras import require
from lmforge.generate.sampling import (
    MIN_TEMPERATURE,
    REPETITION_PENALTY_RANGE,
    SEED_RANGE,
    DecodeStep,
    SamplingParams,
)
from lmforge.lm import LM, load
from lmforge.models.registry import ARCHITECTURES, TASK_MODELS, model_config_class
from lmforge.serve.batching import Batcher, CallJob, GenerateJob, TokenLogprob
from lmforge.serve.metrics import Metrics
from lmforge.serve.protocol import (
    MAX_PROMPTS,
    ApiError,
    Limits,
    RequestBody,
    Served,
    error_response,
    until_answered,
)
from lmforge.serve.tasks import Embedder, add_task_routes, is_pipeline
from lmforge.tasks.pipeline import pipeline

MAX_BODY_BYTES = 1 << 20
MAX_STOPS = 4  # as OpenAI
CHAT_STOPS = ["\nUser:", "\nSystem:"]
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")

log = logging.getLogger("lmforge.serve")


# ---- request bodies --------------------------------------------------------------------------------------
class StreamOptions(RequestBody):
    include_usage: bool = False


# Fields OpenAI clients send that change nothing about the answer: accepted and ignored. Any other field the
# server does not know is a 400 naming it, so a client never believes a setting took effect when it did not.
IGNORED_FIELDS = {"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"}
MAX_TOP_LOGPROBS = 20
MAX_N = 16


class Sampling(RequestBody):
    model_config = ConfigDict(extra="allow")  # checked by `check_fields`

    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None  # the chat API's newer name for max_tokens
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # an extension: OpenAI has no top-k
    repetition_penalty: float | None = None  # an extension
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Not implemented: refused (400) when given a value that would change the answer.
    tools: list | None = None
    tool_choice: str | dict | None = None
    functions: list | None = None
    function_call: str | dict | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict | None = None


class CompletionRequest(Sampling):
    # Text, texts, or token ids (one list of ids, or a list of them), as OpenAI's API takes.
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = (
        None  # the legacy API: the top `logprobs` tokens at each position (0: the chosen only)
    )
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class TokenizeRequest(RequestBody):
    prompt: str
    add_special_tokens: bool = False  # lmforge's tokenizers add none: accepted for vLLM's clients


class DetokenizeRequest(RequestBody):
    tokens: list[int]


class ChatMessage(RequestBody):
    role: str
    content: str | list[dict] | None = None


class ChatRequest(Sampling):
    messages: list[ChatMessage]
    logprobs: bool | None = None
    top_logprobs: int | None = None


# ---- what the checkpoint serves ------------------------------------------------------------------------------
def load_served(
    model, device: str = "auto", compile: str | bool = "auto", dtype: str | None = None
) -> Served:
    """A checkpoint path, an `LM` or a task pipeline (`lmforge.pipeline(...)`), with what it can serve; `dtype`
    is a language model's weight dtype (LM.from_pretrained; task pipelines run in fp32)."""
    if isinstance(model, (str, os.PathLike)):
        # Known from the config so that a task model's weights are loaded once, by its pipeline.
        arch = read_config(resolve_checkpoint(model)).get("arch")
        task = (
            TASK_MODELS.get(getattr(model_config_class(arch), "objective", None))
            if arch in ARCHITECTURES
            else None
        )
        model = (
            pipeline(task[1], model, device=device)
            if task
            else load(model, device=device, compile=compile, dtype=dtype)
        )
    if is_pipeline(model):
        kind = TASK_MODELS[model.lm.model.config.objective][1]
        return Served(model.lm, _name(model.lm), kind, pipeline=model, embedder=Embedder.of(model.lm))
    if not isinstance(model, LM):
        raise ConfigError("serve needs a checkpoint path, an LM or a task pipeline (classify, ner or qa)")
    if getattr(model.model.config, "objective", None) in TASK_MODELS:
        return load_served(model.path, device, compile, dtype)
    embedder = Embedder.of(model)
    task = model.config.get("data", {}).get("task")
    if model.is_seq2seq() or task in ("translate", "summarize"):  # what transduce() serves
        return Served(
            model, _name(model), "summarize" if task == "summarize" else "translate", embedder=embedder
        )
    try:
        model.check_generative()
    except ConfigError as exc:
        return Served(
            model, _name(model), "embed" if embedder else "none", why_not_generate=str(exc), embedder=embedder
        )
    return Served(
        model,
        _name(model),
        "generate",
        chat_template=compile_template(model.config.get("chat_template")),
        embedder=embedder,
    )


def _name(lm) -> str:
    if lm.path is None:
        return "lmforge"
    path = Path(lm.path)
    # A run directory's checkpoints are named best/latest/step-N: the run's name says more.
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def compile_template(source: str | None):
    """A checkpoint's chat_template (Jinja, Hugging Face's convention) compiled in a sandbox; None without one."""
    if not source:
        return None
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise ConfigError(f"the checkpoint's chat_template does not compile: {exc}") from None


# ---- turning requests into jobs ---------------------------------------------------------------------------
def check_fields(req: Sampling) -> None:
    """400 for a field the server does not implement (naming it), and for n outside 1..MAX_N."""
    unknown = sorted(set(req.model_extra or {}) - IGNORED_FIELDS)
    if unknown:
        raise ApiError(
            400,
            f"{unknown[0]} is not supported by this server",
            code="unsupported_parameter",
            param=unknown[0],
        )
    for name in ("tools", "functions"):
        if getattr(req, name):
            raise ApiError(400, f"{name} (function calling) is not supported by this server", param=name)
    for name in ("tool_choice", "function_call"):
        if getattr(req, name) not in (None, "none"):
            raise ApiError(400, f"{name} is not supported by this server (no function calling)", param=name)
    if req.response_format is not None and req.response_format.get("type") != "text":
        raise ApiError(
            400, 'response_format: only {"type": "text"} is supported by this server', param="response_format"
        )
    if req.n is not None and not 1 <= req.n <= MAX_N:
        raise ApiError(400, f"n must be between 1 and {MAX_N}, got {req.n}", param="n")
    if req.n not in (None, 1) and req.stream:
        raise ApiError(400, "stream takes n = 1", param="n")


def sampling_params(
    req: Sampling, limits: Limits, default_max_tokens: int, vocab_size: int, allow_zero: bool = False
) -> SamplingParams:
    check_fields(req)
    max_tokens = req.max_tokens if req.max_tokens is not None else req.max_completion_tokens
    max_tokens = default_max_tokens if max_tokens is None else max_tokens
    # max_tokens 0 with echo scores a prompt without continuing it (lm-evaluation-harness asks for that).
    low = 0 if allow_zero else 1
    if not low <= max_tokens <= limits.max_tokens:
        raise ApiError(
            400,
            f"max_tokens must be between {low} and {limits.max_tokens}, got {max_tokens}",
            param="max_tokens",
        )
    # (NaN fails every comparison below: `not low <= x <= high` refuses it.)
    temperature = 1.0 if req.temperature is None else req.temperature
    if not (temperature == 0 or MIN_TEMPERATURE <= temperature <= 2):
        raise ApiError(
            400,
            f"temperature must be 0 (greedy) or between {MIN_TEMPERATURE:g} and 2, got {temperature}",
            param="temperature",
        )
    top_p = 1.0 if req.top_p is None else req.top_p
    if not 0 < top_p <= 1:
        raise ApiError(400, f"top_p must be in (0, 1], got {top_p}", param="top_p")
    if req.top_k is not None and req.top_k < 1:
        raise ApiError(400, f"top_k must be at least 1, got {req.top_k}", param="top_k")
    penalty = 1.0 if req.repetition_penalty is None else req.repetition_penalty
    low, high = REPETITION_PENALTY_RANGE
    if not low <= penalty <= high:
        raise ApiError(
            400,
            f"repetition_penalty must be between {low:g} and {high:g} (1: none), got {penalty}",
            param="repetition_penalty",
        )
    if req.seed is not None and not SEED_RANGE[0] <= req.seed <= SEED_RANGE[1]:
        raise ApiError(400, f"seed must be between -2**63 and 2**64 - 1, got {req.seed}", param="seed")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(req, name)
        if value is not None and not -2 <= value <= 2:
            raise ApiError(400, f"{name} must be between -2 and 2, got {value}", param=name)
    params = SamplingParams(
        max_tokens,
        temperature,
        req.top_k,
        None if top_p == 1 else top_p,
        penalty,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logit_bias=logit_bias(req.logit_bias, vocab_size),
    )
    try:
        params.validate()  # the library's own rules, in case they are stricter than the ones above
    except ConfigError as exc:
        raise ApiError(400, str(exc)) from None
    return params


def logit_bias(bias: dict[str, float] | None, vocab_size: int) -> dict[int, float] | None:
    """OpenAI's logit_bias ({"token id": bias from -100 to 100}) with integer keys; 400 for a bad entry."""
    if not bias:
        return None
    out = {}
    for key, value in bias.items():
        if not key.isdigit() or int(key) >= vocab_size:
            raise ApiError(
                400, f"logit_bias keys must be token ids below {vocab_size}, got {key!r}", param="logit_bias"
            )
        if not -100 <= value <= 100:
            raise ApiError(
                400, f"logit_bias values must be between -100 and 100, got {value}", param="logit_bias"
            )
        out[int(key)] = float(value)
    return out


def stop_strings(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS or any(not s for s in stops):
        raise ApiError(400, f"stop takes up to {MAX_STOPS} non-empty strings", param="stop")
    return stops


def make_job(
    served: Served,
    limits: Limits,
    prompt: str | list[int],
    params: SamplingParams,
    stops: list[str],
    seed: int | None,
    logprobs: int | None = None,
) -> GenerateJob:
    """The prompt tokenized, as a job for the batcher (CPU work: the routes call it in a thread pool). A prompt of
    token ids is the model's context as it is (no end-of-sequence token before it)."""
    if not isinstance(prompt, str):
        return GenerateJob(
            served.lm.tokenizer.decode(prompt),
            prompt_token_ids(served, prompt),
            params,
            stops,
            seed,
            logprobs=logprobs,
        )
    limit = limits.max_prompt_chars
    if limit is not None and len(prompt) > limit:  # refused before the tokenizer spends time on it
        raise ApiError(
            400,
            f"the prompt is {len(prompt):,} characters long; the model's context is "
            f"{served.lm.model.config.block_size} tokens, which this server takes to mean at most {limit:,} "
            "characters; shorten the prompt",
            code="context_length_exceeded",
            param="prompt",
        )
    try:
        ids = served.lm.prompt_ids(prompt)  # the LM's own context check
    except ConfigError as exc:
        raise ApiError(400, str(exc), code="context_length_exceeded", param="prompt") from None
    # The end-of-sequence token before a text is the model's context, not part of the prompt's text.
    shown_from = int(served.lm.tokenizer.eos_id is not None)  # LM.prompt_ids puts it first
    return GenerateJob(prompt, ids, params, stops, seed, logprobs=logprobs, shown_from=shown_from)


def prompt_token_ids(served: Served, ids: list[int]) -> list[int]:
    """A prompt given as token ids, checked against the vocabulary and the context."""
    vocab, block = served.lm.tokenizer.vocab_size, served.lm.model.config.block_size
    if not ids:
        raise ApiError(400, "a prompt of token ids must hold at least one id", param="prompt")
    if any(not 0 <= i < vocab for i in ids):
        raise ApiError(400, f"prompt token ids must be between 0 and {vocab - 1}", param="prompt")
    if len(ids) > block:
        raise ApiError(
            400,
            f"the prompt is {len(ids)} tokens long but the model's context is {block}; shorten the prompt",
            code="context_length_exceeded",
            param="prompt",
        )
    return list(ids)


def prompt_char_limit(lm) -> int:
    """More characters than a prompt that fits `lm`'s context has, in practice: the context times the longest
    token's characters, twice over (normalisation), at least 16 a token. (Whitespace that a word-level or
    WordPiece tokenizer drops, and long words a word-level one does not know, are the exceptions.)"""
    try:
        longest = max(map(len, lm.tokenizer.hf.get_vocab(with_added_tokens=True)), default=1)
    except AttributeError:  # not a Hugging Face `tokenizers` tokenizer
        longest = 64
    return lm.model.config.block_size * 2 * max(16, longest)


def chat_prompt(served: Served, messages: list[ChatMessage]) -> str:
    if not messages:
        raise ApiError(400, "messages must hold at least one message", param="messages")
    plain = [{"role": m.role, "content": _text_of(m.content)} for m in messages]
    if served.chat_template is None:
        turns = [f"{m['role'].strip().capitalize() or 'User'}: {m['content']}" for m in plain]
        return "\n".join(turns + ["Assistant:"])
    from jinja2 import TemplateError

    try:
        return served.chat_template.render(
            messages=plain, add_generation_prompt=True, bos_token="", eos_token=""
        )
    except TemplateError as exc:
        raise ApiError(
            400, f"the model's chat template refused these messages: {exc}", param="messages"
        ) from None


def _text_of(content: str | list[dict] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if any(part.get("type") != "text" or not isinstance(part.get("text", ""), str) for part in content):
        raise ApiError(
            400, "only text message parts ({'type': 'text', 'text': '...'}) are supported", param="messages"
        )
    return "".join(part.get("text", "") for part in content)


def usage(jobs: list[GenerateJob], completions) -> dict:
    prompt = sum(len(j.ids) for j in jobs)
    done = sum(c.completion_tokens for c in completions)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


# ---- the app ----------------------------------------------------------------------------------------------
def create_app(
    model,
    api_key: str | None = None,
    max_batch_size: int = 8,
    batch_window: float = 0.01,
    max_tokens_limit: int = 1024,
    timeout: float = 60.0,
    device: str = "auto",
    max_body_bytes: int = MAX_BODY_BYTES,
    compile: str | bool = "auto",
    allowed_hosts: list[str] | None = None,
    body_timeout: float = 10.0,
    keep_alive_timeout: float = 5.0,
    dtype: str | None = None,
) -> FastAPI:
    """The server for `model` (a checkpoint path, an `LM` or a classify, ner or qa pipeline).

    api_key (or the environment variable LMFORGE_API_KEY) makes /v1/* and /metrics require `Authorization:
    Bearer KEY`. Concurrent non-streaming completions with the same sampling settings wait up to `batch_window`
    seconds to be decoded together, up to `max_batch_size` at a time. A request still generating after `timeout`
    seconds stops and answers 504. `compile` torch.compiles the decoding step (auto: on CUDA; true on a CPU too), in a
    background thread from the server's start: requests decode eagerly until it is ready, then faster (/health's
    "decoding" says "compiling", then "compiled"; benchmarks/RESULTS.md). `dtype` (auto,
    bf16, fp16, fp32) is a checkpoint's weight dtype (LM.from_pretrained; None: fp32 as stored).

    A request arriving on a loopback address must name localhost, 127.0.0.1 or [::1] (any port) in its Host
    header, or one of `allowed_hosts` ("*": any); when `allowed_hosts` is given, requests arriving on other
    addresses are held to the same list. A request body must arrive within `body_timeout` seconds (else 408);
    `keep_alive_timeout` is how long an idle connection stays open (`server_config` hands it to uvicorn).
    """
    _check_settings(
        max_batch_size=max_batch_size,
        batch_window=batch_window,
        max_tokens_limit=max_tokens_limit,
        timeout=timeout,
        max_body_bytes=max_body_bytes,
        body_timeout=body_timeout,
        keep_alive_timeout=keep_alive_timeout,
    )
    served = load_served(model, device, compile, dtype)
    # api_key="" turns the check off even when the environment has a key.
    api_key = (api_key if api_key is not None else os.environ.get("LMFORGE_API_KEY")) or None
    batcher = Batcher(served.lm, max_batch_size, batch_window)
    metrics = Metrics(batcher.stats)
    limits = Limits(
        max_tokens_limit,
        timeout,
        max_prompt_chars=prompt_char_limit(served.lm) if served.kind == "generate" else None,
    )

    app = FastAPI(title="lmforge", summary=f"lmforge serving {served.name}", docs_url="/docs", redoc_url=None)
    app.state.served, app.state.batcher, app.state.metrics = served, batcher, metrics
    app.state.keep_alive_timeout = keep_alive_timeout
    app.state.body_timeout = body_timeout
    app.state.max_body_bytes = max_body_bytes
    app.router.add_event_handler("shutdown", batcher.close)
    if served.kind == "generate" and served.lm.compile_decoding and hasattr(served.lm.model, "new_cache"):
        # Compiled in the background from the start: requests decode eagerly until it is done, instead of the
        # first ones waiting for the compile (/health says which).
        app.router.add_event_handler("startup", lambda: _warm_up(served.lm.model))
    _add_error_handlers(app)
    key_checker = Depends(_key_checker(api_key))
    router = APIRouter(prefix="/v1", dependencies=[key_checker])
    _add_generation_routes(router, served, batcher, limits)
    add_task_routes(router, served, batcher, limits)

    @router.get("/models")
    async def models():
        return {"object": "list", "data": [_model_card(served)]}

    app.include_router(router)
    _add_plain_routes(app, served, metrics, key_checker)
    # Added innermost first. From the outside in: a bug answers 500 and keeps the connection; metrics see every
    # answer; a foreign Host is refused before anything else; the body limit and timeout refuse a huge or slow
    # body before anything reads it.
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, timeout=body_timeout)
    app.add_middleware(AllowedHosts, hosts=allowed_hosts)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(ServerErrors)
    return app


def _warm_up(model) -> None:
    log.info("compiling the decoding step in the background; requests decode eagerly until it is ready")
    DecodeStep.warm_up(model, on_ready=lambda s: log.info("compiled decoding ready after %.1f s", s))


def _check_settings(**settings: float) -> None:
    """ConfigError for a setting that is not a finite number in its range (NaN would pass a plain `x <= 0`)."""
    lowest = {"batch_window": 0, "max_batch_size": 1, "max_tokens_limit": 1}  # the others: > 0
    for name, value in settings.items():
        low = lowest.get(name)
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        if not (finite and (value > 0 if low is None else value >= low)):
            need = "> 0" if low is None else f">= {low}"
            raise ConfigError(f"{name} must be a finite number {need}, got {value}")


def server_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, **options):
    """uvicorn's Config for `app` with the server's own settings (the idle keep-alive timeout of create_app);
    `options` go to uvicorn.Config as they are. `uvicorn.Server(server_config(app, ...)).run()` serves it."""
    uvicorn = require("uvicorn", extra="serve", feature="lmforge serve")
    from lmforge.serve.http import HeadDeadlineProtocol  # it subclasses uvicorn's protocol: after the require

    options.setdefault("timeout_keep_alive", app.state.keep_alive_timeout)
    # A request's head (line and headers) must arrive within the body's deadline too (slowloris).
    head = type("HeadDeadline", (HeadDeadlineProtocol,), {"head_timeout": app.state.body_timeout})
    options.setdefault("http", head)
    return uvicorn.Config(app, host=host, port=port, **options)


def _model_card(served: Served) -> dict:
    return {
        "id": served.name,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "lmforge",
        "kind": served.kind,
        "endpoints": served.endpoints,
    }


def _key_checker(api_key: str | None):
    async def check(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), api_key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                type="authentication_error",
                code="invalid_api_key",
            )

    return check


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.message, exc.type, exc.code, exc.param, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON", code="invalid_json")
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "invalid_text" and first.get("ctx", {}).get("path"):
            loc.append(first["ctx"]["path"])  # where inside the field (a list item, a message part)
        where = ".".join(loc)
        code = "invalid_text" if first.get("type") == "invalid_text" else None
        return error_response(
            400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", code=code, param=where or None
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), code=str(exc.status_code))

    @app.exception_handler(LmforgeError)
    async def user_error(request, exc: LmforgeError):
        return error_response(400, str(exc))

    # Any other exception is a bug: ServerErrors (a middleware) answers it. Starlette's own handler for Exception
    # re-raises after answering, and the server then drops the client's keep-alive connection.


def _add_generation_routes(router: APIRouter, served: Served, batcher: Batcher, limits: Limits) -> None:
    @router.post("/completions")
    async def completions(req: CompletionRequest, request: Request):
        served.require("generate")
        prompts = _prompts(req.prompt)
        if req.stream and len(prompts) > 1:
            raise ApiError(400, "stream takes a single prompt", param="prompt")
        vocab = served.lm.tokenizer.vocab_size
        params, stops = sampling_params(req, limits, 16, vocab, allow_zero=req.echo), stop_strings(req.stop)
        n = req.n or 1
        if req.suffix:
            raise ApiError(400, "suffix (insertion) is not supported by this server", param="suffix")
        if req.best_of not in (None, n):
            raise ApiError(
                400, f"best_of must equal n ({n}): this server returns every completion", param="best_of"
            )
        top = _top_count(req.logprobs, "logprobs")
        if top is not None and req.stream:
            raise ApiError(400, "logprobs are not supported with stream", param="logprobs")
        jobs = await run_in_threadpool(  # tokenizing is CPU work: off the event loop
            lambda: [
                make_job(served, limits, p, params, stops, _seed(req.seed, k), top)
                for p in prompts
                for k in range(n)
            ]
        )
        reply = _Reply("text_completion", served.name)
        if req.stream:
            return _stream(batcher, jobs[0], reply, limits.timeout, _include_usage(req), echo=req.echo)
        results = await _run_all(batcher, jobs, limits.timeout, request)
        echoed = (
            await _run_all(
                batcher,
                [CallJob(lambda: _prompt_logprobs(served.lm, jobs[::n], top))],
                limits.timeout,
                request,
            )
            if req.echo and top is not None
            else [None]
        )[0]
        choices = []
        for i, (job, r) in enumerate(zip(jobs, results)):
            head = job.prompt if req.echo else ""
            logprobs = None
            if top is not None:
                logprobs = _legacy_logprobs(
                    served.lm.tokenizer, echoed[i // n] if echoed else None, r.logprobs, len(job.prompt)
                )
            choices.append(
                {"text": head + r.text, "index": i, "logprobs": logprobs, "finish_reason": r.finish_reason}
            )
        return reply.body(choices, usage(jobs[::n], results))

    @router.post("/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        served.require("generate")
        params = sampling_params(req, limits, limits.max_tokens, served.lm.tokenizer.vocab_size)
        stops = stop_strings(req.stop) + (CHAT_STOPS if served.chat_template is None else [])
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        top = _top_count(req.top_logprobs or 0, "top_logprobs") if req.logprobs else None
        if top is not None and req.stream:
            raise ApiError(400, "logprobs are not supported with stream", param="logprobs")
        n = req.n or 1
        jobs = await run_in_threadpool(  # the template and tokenizing are CPU work: off the event loop
            lambda: [
                make_job(served, limits, prompt, params, stops, _seed(req.seed, k), top)
                for prompt in [chat_prompt(served, req.messages)]
                for k in range(n)
            ]
        )
        reply = _Reply("chat.completion", served.name)
        if req.stream:
            return _stream(batcher, jobs[0], reply, limits.timeout, _include_usage(req))
        results = await _run_all(batcher, jobs, limits.timeout, request)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": r.text},
                "logprobs": None
                if top is None
                else {"content": _chat_logprobs(served.lm.tokenizer, r.logprobs)},
                "finish_reason": r.finish_reason,
            }
            for i, r in enumerate(results)
        ]
        return reply.body(choices, usage(jobs[:1], results))


def _prompts(prompt) -> list[str | list[int]]:
    """The prompts of a completion request: texts, or lists of token ids."""
    if isinstance(prompt, str) or (prompt and all(isinstance(t, int) for t in prompt)):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not 1 <= len(prompts) <= MAX_PROMPTS:
        raise ApiError(
            400,
            f"prompt must be a string, a list of 1 to {MAX_PROMPTS} strings, or token ids (a list, or 1 to "
            f"{MAX_PROMPTS} lists)",
            param="prompt",
        )
    return prompts


def _seed(seed: int | None, k: int) -> int | None:
    """The seed of a request's k-th choice (n > 1): seed + k, so each seeded choice is its own reproducible sample."""
    if seed is None or k == 0:
        return seed
    return seed + k if seed + k <= SEED_RANGE[1] else seed - k


def _top_count(value: int | None, name: str) -> int | None:
    if value is None:
        return None
    if not 0 <= value <= MAX_TOP_LOGPROBS:
        raise ApiError(400, f"{name} must be between 0 and {MAX_TOP_LOGPROBS}, got {value}", param=name)
    return value


def _prompt_logprobs(lm, jobs: list[GenerateJob], top: int) -> list[list[TokenLogprob]]:
    """Each job's prompt tokens as echoed (a text prompt without the end-of-sequence token the model reads before
    it), each with its log-probability given the tokens before it and the `top` most likely tokens there; the first
    has none (None), as OpenAI answers."""
    out = []
    for job, (lps, _, alts) in zip(jobs, lm.token_logprobs([j.ids for j in jobs], top=top)):
        scored = [TokenLogprob(t, lp, a) for t, lp, a in zip(job.ids[1:], lps, alts or [[]] * len(lps))]
        first = job.shown_from  # scored[k] is the entry of ids[k + 1]
        out.append([TokenLogprob(job.ids[first], None, [])] + scored[first:] if first < len(job.ids) else [])
    return out


def _token_text(tokenizer, token: int) -> str:
    return tokenizer.decode([token], skip_special_tokens=False)


def _legacy_logprobs(tokenizer, prompt: list | None, generated: list | None, prompt_chars: int) -> dict:
    """The completions API's logprobs object: tokens, token_logprobs, top_logprobs and text_offset (each token's
    first character in the choice's text, which starts after the prompt unless it is echoed)."""
    entries = (prompt or []) + (generated or [])
    offset = 0 if prompt is not None else prompt_chars
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e in entries:
        text = _token_text(tokenizer, e.token)
        out["tokens"].append(text)
        out["token_logprobs"].append(e.logprob)
        top = None if e.logprob is None else {_token_text(tokenizer, t): lp for t, lp in e.top}
        out["top_logprobs"].append(top)
        out["text_offset"].append(offset)
        offset += len(text)
    return out


def _chat_logprobs(tokenizer, entries: list) -> list[dict]:
    """The chat API's logprobs content: token, logprob, bytes and top_logprobs for each token of the answer."""

    def one(token: int, logprob: float) -> dict:
        text = _token_text(tokenizer, token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return [
        {**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]} for e in entries or []
    ]


def _include_usage(req: Sampling) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)


async def _run_all(batcher: Batcher, jobs: list, timeout: float, request: Request) -> list:
    try:
        work = asyncio.gather(*(asyncio.wrap_future(batcher.submit(j)) for j in jobs))
        return await until_answered(request, work, timeout)
    finally:  # a timeout or a client that went away: the worker drops what is left of these jobs
        for j in jobs:
            batcher.cancel(j)


class _Reply:
    """The envelope of one response: its id, object type, creation time and model."""

    def __init__(self, object: str, model: str):
        prefix = "chatcmpl" if object.startswith("chat") else "cmpl"
        self.id, self.object, self.model, self.created = (
            f"{prefix}-{uuid.uuid4().hex}",
            object,
            model,
            int(time.time()),
        )

    @property
    def chat(self) -> bool:
        return self.object.startswith("chat")

    def body(self, choices: list, usage: dict | None = None, object: str | None = None) -> dict:
        out = {
            "id": self.id,
            "object": object or self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            out["usage"] = usage
        return out

    def chunk(self, text: str | None = None, finish_reason: str | None = None, role: bool = False) -> dict:
        if self.chat:
            delta = (
                {"role": "assistant", "content": ""}
                if role
                else ({"content": text} if text is not None else {})
            )
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return self.body([choice], object="chat.completion.chunk")
        return self.body([{"text": text or "", "index": 0, "logprobs": None, "finish_reason": finish_reason}])


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class _JobStream(StreamingResponse):
    """A streaming response that stops its job when the response ends for any reason (the client went away)."""

    def __init__(self, content, on_close):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def _stream(
    batcher: Batcher, job: GenerateJob, reply: _Reply, timeout: float, include_usage: bool, echo: bool = False
):
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()

    def put(item) -> None:  # called in the worker thread
        try:
            loop.call_soon_threadsafe(pieces.put_nowait, item)
        except RuntimeError:  # the event loop is gone: nobody is listening any more
            job.cancelled.set()

    job.on_piece = put
    future = batcher.submit(job)
    future.add_done_callback(lambda _: put(None))  # after every piece: the worker queues them in order

    async def events():
        deadline = loop.time() + timeout
        if reply.chat:
            yield _sse(reply.chunk(role=True))
        elif echo and job.prompt:
            yield _sse(reply.chunk(job.prompt))
        while (piece := await asyncio.wait_for(pieces.get(), max(0.0, deadline - loop.time()))) is not None:
            yield _sse(reply.chunk(piece))
        result = future.result()
        yield _sse(reply.chunk(None if reply.chat else "", result.finish_reason))
        if include_usage:
            yield _sse(
                reply.body([], usage([job], [result]), object=reply.object + (".chunk" if reply.chat else ""))
            )
        yield "data: [DONE]\n\n"

    async def guarded():
        # The status line is sent already: a failure mid-stream becomes an error event, as OpenAI does.
        try:
            async for event in events():
                yield event
        except asyncio.TimeoutError:
            yield _sse(
                {
                    "error": {
                        "message": f"the request took longer than {timeout:g} s and was stopped",
                        "type": "timeout",
                        "code": "timeout",
                        "param": None,
                    }
                }
            )
        except Exception as exc:  # noqa: BLE001 - a stream cannot change its status any more
            yield _sse({"error": {"message": str(exc), "type": "server_error", "code": None, "param": None}})

    return _JobStream(guarded(), on_close=lambda: batcher.cancel(job))


def _add_plain_routes(app: FastAPI, served: Served, metrics: Metrics, key_checker) -> None:
    @app.get("/health")
    async def health():
        decoding = (
            DecodeStep.status(served.lm.model)
            if served.kind == "generate" and served.lm.compile_decoding
            else "eager"
        )
        return {
            "status": "ok",
            "model": served.name,
            "kind": served.kind,
            "endpoints": served.endpoints,
            "decoding": decoding,
        }

    @app.get("/metrics", dependencies=[key_checker])
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    # vLLM's tokenizer routes: lm-evaluation-harness's local-completions finds them and tokenizes with the server's
    # own tokenizer (its "remote" tokenizer backend).
    tokenizer = served.lm.tokenizer

    @app.get("/tokenizer_info", dependencies=[key_checker])
    async def tokenizer_info():
        def token(i):
            return None if i is None else tokenizer.id_to_token(i)

        return {
            "eos_token": token(tokenizer.eos_id),
            "bos_token": token(tokenizer.bos_id),
            "pad_token": token(tokenizer.pad_id),
            "chat_template": served.lm.config.get("chat_template"),
            "model_max_length": served.lm.model.config.block_size,
            "vocab_size": tokenizer.vocab_size,
        }

    @app.post("/tokenize", dependencies=[key_checker])
    async def tokenize(req: TokenizeRequest):
        ids = await run_in_threadpool(tokenizer.encode, req.prompt)
        return {"tokens": ids, "count": len(ids), "max_model_len": served.lm.model.config.block_size}

    @app.post("/detokenize", dependencies=[key_checker])
    async def detokenize(req: DetokenizeRequest):
        if any(not 0 <= t < tokenizer.vocab_size for t in req.tokens):
            raise ApiError(
                400, f"tokens must be ids between 0 and {tokenizer.vocab_size - 1}", param="tokens"
            )
        return {"prompt": tokenizer.decode(req.tokens, skip_special_tokens=False)}

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return HTMLResponse(resources.files("lmforge.serve").joinpath("static/index.html").read_text("utf-8"))


# ---- middleware (plain ASGI: it must not buffer or break streaming responses) ---------------------------
class BodyLimit:
    """Answers 413 to a request body larger than `max_bytes`, whether or not it declares its length, and 408 to
    one that has not arrived after `timeout` seconds (a client that never finishes its body holds no
    connection for long). Either answer closes the connection. Before a 413 the rest of a body up to DRAIN_FACTOR
    times the limit is read and dropped (within the same deadline): closing a socket with unread data resets it,
    and the reset could reach the client before the 413 does (the soak benchmark saw ~1 in 10 such clients read
    only a connection reset)."""

    DRAIN_FACTOR = 8

    def __init__(self, app, max_bytes: int, timeout: float):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            if int(declared) <= self.DRAIN_FACTOR * self.max_bytes:
                await self._drain(receive, deadline)
            return await self._refuse(scope, receive, send, 413)
        chunks, size, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return await self._refuse(scope, receive, send, 408)
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                if more:
                    await self._drain(receive, deadline, size)
                return await self._refuse(scope, receive, send, 413)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # afterwards the app may wait for http.disconnect

        await self.app(scope, replay, send)

    async def _drain(self, receive, deadline: float, size: int = 0) -> None:
        """Read and drop the rest of a body, up to DRAIN_FACTOR times the limit and until the deadline."""
        loop = asyncio.get_running_loop()
        while size <= self.DRAIN_FACTOR * self.max_bytes:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return
            if message["type"] != "http.request":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _refuse(self, scope, receive, send, status: int):
        if status == 413:
            message, code = f"the request body is larger than {self.max_bytes} bytes", "request_too_large"
        else:
            message, code = f"the request body did not arrive within {self.timeout:g} s", "request_timeout"
        await error_response(status, message, code=code, headers={"Connection": "close"})(
            scope, receive, send
        )


class AllowedHosts:
    """Answers 400 to a request whose Host header names a host this server does not answer to.

    A request arriving on a loopback address must name a loopback host (localhost, 127.0.0.1, [::1]; any port) or
    one of `hosts`: a web page whose DNS name an attacker rebinds to 127.0.0.1 sends its own name, so it cannot
    reach a server that has no API key. With `hosts` given, requests arriving on other addresses are held to the
    same list; "*" in `hosts` allows any Host."""

    def __init__(self, app, hosts: list[str] | None):
        self.app, self.given = app, hosts is not None
        self.hosts = {_host_name(h) for h in (hosts or [])} | set(LOOPBACK_HOSTS)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or "*" in self.hosts or not self._checked(scope):
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host")
        if host is None or _host_name(host.decode("latin-1")) in self.hosts:  # no Host: not a browser
            return await self.app(scope, receive, send)
        shown = host.decode("latin-1")[:100]
        names = ", ".join(sorted(h if ":" not in h else f"[{h}]" for h in self.hosts))
        response = error_response(
            400,
            f"this server does not answer to the host {shown!r} (it answers to {names}); start it with "
            f"--allowed-hosts {_host_name(shown) or 'NAME'} to allow it",
            code="host_not_allowed",
        )
        await response(scope, receive, send)

    def _checked(self, scope) -> bool:
        """Whether the request arrived on a loopback address (or any address, with `hosts` given)."""
        if self.given:
            return True
        server = scope.get("server")
        if not server:
            return False
        try:
            return ipaddress.ip_address(str(server[0])).is_loopback
        except ValueError:  # a name (a test client) or a Unix socket path
            return False


def _host_name(host: str) -> str:
    """The host of a Host header or an allowed-hosts entry, without its port: "[::1]:8000" -> "::1"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:  # a name or IPv4 address with a port (a bare IPv6 address has several colons)
        host = host.split(":")[0]
    return host.rstrip(".")


class ServerErrors:
    """Answers an exception no handler took (a bug) with 500 in OpenAI's error shape and logs it. Starlette's own
    handler re-raises after answering, and the server then drops the client's keep-alive connection; here the
    connection stays usable. (An exception after the response started can only end the connection.)"""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_started(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_started)
        except Exception as exc:
            if started:
                raise
            log.exception("internal error answering %s %s", scope.get("method"), scope.get("path"))
            response = error_response(
                500, f"internal error: {type(exc).__name__}: {exc}", type="server_error"
            )
            await response(scope, receive, send)


class MetricsMiddleware:
    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe(scope["path"], status, time.perf_counter() - start)
