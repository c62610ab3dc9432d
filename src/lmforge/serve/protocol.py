"""What every route of `lmforge serve` shares: the request body base, OpenAI's error shape, the served model and
the server's limits.

serve/app.py (the generation routes and the app) and serve/tasks.py (the task and embedding routes) both build on
this module, and it imports neither of them:

- `RequestBody`: the base of every request body (it ignores fields the server does not use, as OpenAI clients send
  some: `user`, `logprobs`, ...);
- `ApiError` and `error_response`: an error a route raises and the JSON it answers with,
  `{"error": {"message", "type", "code", "param"}}`;
- `KINDS` and `Served`: what kind of model the server has, the endpoints it serves, and the 400 for the others;
- `Limits` and `MAX_PROMPTS`: the per-request limits every route checks.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

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
    body = {"error": {"message": message, "type": type, "code": code, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers)


class RequestBody(BaseModel):
    """The base of every request body."""

    model_config = ConfigDict(
        extra="ignore"
    )  # OpenAI clients send fields we do not use (user, logprobs, ...)


@dataclass
class Limits:
    max_tokens: int = 1024
    timeout: float = 60.0


# ---- what the checkpoint serves ------------------------------------------------------------------------------
KINDS = {  # kind: (what the model is, its endpoints)
    "generate": ("a generative language model", ["/v1/completions", "/v1/chat/completions"]),
    "classify": ("a fine-tuned classifier", ["/v1/classify"]),
    "ner": ("a fine-tuned NER tagger", ["/v1/ner"]),
    "qa": ("a fine-tuned extractive question-answering model", ["/v1/qa"]),
    "translate": ("a text-to-text (translation) model", ["/v1/translate"]),
    "summarize": ("a fine-tuned summarizer", ["/v1/summarize"]),
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
