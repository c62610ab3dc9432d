"""What every route of `lmforge serve` shares: the request body base, OpenAI's error shape, the served model and
the server's limits.

serve/app.py (the generation routes and the app) and serve/tasks.py (the task and embedding routes) both build on
this module, and it imports neither of them:

- `RequestBody`: the base of every request body (it ignores fields it does not know; the completion routes'
  bodies instead refuse any field they do not implement, serve/app.py `check_fields`);
- `ApiError` and `error_response`: an error a route raises and the JSON it answers with,
  `{"error": {"message", "type", "code", "param"}}`;
- `KINDS` and `Served`: what kind of model the server has, the endpoints it serves, and the 400 for the others;
- `Limits` and `MAX_PROMPTS`: the per-request limits every route checks;
- `until_answered`: waits for a request's work, stopping it when the client hangs up or the time is up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, field_validator
from pydantic_core import PydanticCustomError

MAX_PROMPTS = 64  # prompts in one completion request, inputs in one task or embeddings request


class ApiError(Exception):
    """A request the server cannot serve: answered with `status` and OpenAI's error body (see error_response)."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param


def error_response(
    status: int,
    message: str,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict | None = None,
) -> JSONResponse:
    # A message may quote what the client sent: a lone surrogate in it could not be encoded as UTF-8.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    param = None if param is None else param.encode("utf-8", "backslashreplace").decode("utf-8")
    body = {"error": {"message": message, "type": type, "code": code, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers)


class RequestBody(BaseModel):
    """The base of every request body: every string in it, however deep, must be valid Unicode."""

    model_config = ConfigDict(extra="ignore")  # the completion routes' bodies override this (serve/app.py)

    @field_validator("*", mode="after")
    @classmethod
    def _valid_text(cls, value):
        # JSON can spell a lone surrogate ("\ud800"), which no encoder (UTF-8, the tokenizers) accepts.
        bad = _invalid_text(value)
        if bad is not None:
            path, char = bad
            raise PydanticCustomError(
                "invalid_text",
                "not valid Unicode text (a lone surrogate, {char}); send well-formed text",
                {"path": path, "char": char},
            )
        return value


def _invalid_text(value, path: str = "") -> tuple[str, str] | None:
    """(where, the character) of the first lone surrogate in the strings of `value`; None when there is none.
    Nested request bodies check themselves."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return path, f"U+{ord(value[exc.start]):04X}"
        return None
    if isinstance(value, dict):
        items = [(f"{path}.{k}".lstrip("."), v) for k, v in value.items()]
        items = [(path, k) for k in value] + items  # keys are text too
    elif isinstance(value, (list, tuple)):
        items = [(f"{path}.{i}".lstrip("."), v) for i, v in enumerate(value)]
    else:
        return None
    for where, item in items:
        if (bad := _invalid_text(item, where)) is not None:
            return bad
    return None


@dataclass
class Limits:
    max_tokens: int = 1024
    timeout: float = 60.0
    max_prompt_chars: int | None = None  # longer prompts are refused before they are tokenized


# nginx's status for a request whose client went away before its answer: nobody reads it, /metrics counts it.
CLIENT_CLOSED = 499


async def until_answered(request: Request, work: Awaitable, timeout: float):
    """The result of `work`, unless the client hangs up first (ApiError 499) or `timeout` seconds pass (ApiError
    504); then `work` is cancelled, and the caller stops what it started (the batcher drops the request's rows)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            # A cancelled gather still finishes with its children's CancelledError: retrieve it, or asyncio logs
            # "exception was never retrieved" for every request whose client left.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
    if gone.done() and not gone.cancelled():
        gone.exception()  # retrieved: a receive() that failed means the connection is gone as well
    if task in done:
        return task.result()
    if gone in done:
        raise ApiError(CLIENT_CLOSED, "the client closed the connection", code="client_closed")
    raise ApiError(
        504, f"the request took longer than {timeout:g} s and was stopped", type="timeout", code="timeout"
    )


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects. The body has been read: what the server sends next is the end."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# ---- what the checkpoint serves ------------------------------------------------------------------------------
KINDS = {  # kind: (what the model is, its endpoints)
    "generate": (
        "a generative language model",
        ["/v1/completions", "/v1/chat/completions", "/v1/attention"],
    ),
    "classify": ("a fine-tuned classifier", ["/v1/classify", "/v1/explain"]),
    "ner": ("a fine-tuned NER tagger", ["/v1/ner", "/v1/explain"]),
    "qa": ("a fine-tuned extractive question-answering model", ["/v1/qa"]),
    "translate": ("a text-to-text (translation) model", ["/v1/translate", "/v1/attention"]),
    "summarize": ("a fine-tuned summarizer", ["/v1/summarize", "/v1/attention"]),
    "embed": ("a text encoder", []),
}


@dataclass
class Served:
    lm: object
    name: str
    kind: str  # a key of KINDS, or "none"
    why_not_generate: str = ""
    pipeline: object = None  # the task pipeline of a classify, ner or qa checkpoint
    chat_template: object = None
    embedder: object = None  # set when the model also serves /v1/embeddings

    @property
    def endpoints(self) -> list[str]:
        own = KINDS.get(self.kind, ("", []))[1]
        return own + (["/v1/embeddings"] if self.embedder is not None else [])

    def require(self, kind: str) -> None:
        """Refuses (400) a request for an endpoint of `kind` ("embed": /v1/embeddings) that this model cannot serve."""
        if self.kind == kind or (kind == "embed" and self.embedder is not None):
            return
        if self.endpoints:
            serves = f"it is {KINDS[self.kind][0]}: use {' or '.join(self.endpoints)}"
        else:
            serves = self.why_not_generate
        raise ApiError(
            400, f"this server's model {self.name} cannot do that; {serves}", code="wrong_model_kind"
        )
