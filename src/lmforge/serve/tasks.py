"""The task endpoints of `lmforge serve`: what a fine-tuned task model (or an encoder) answers over HTTP.

    POST /v1/classify    {"input": text | {"text", "text_pair"} | [...]}       a classifier (or NLI model)
    POST /v1/ner         {"text": text | [text]}                               an NER tagger
    POST /v1/qa          {"question", "context"} | [{"question", "context"}]  an extractive QA model
    POST /v1/translate   {"text": text | [text], "num_beams", "max_tokens"}    an encoder-decoder
    POST /v1/summarize   the same, for a checkpoint fine-tuned with --task summarize
    POST /v1/embeddings  OpenAI's request and response                         GPT, BERT-style, classifier, tagger
    POST /v1/explain     {"input": text | {"text", "text_pair"}, "method": "ig" | "shap", "target"}
                         a classifier's (or tagger's) attributions: lmforge.explain's JSON (one object)
    POST /v1/attention   {"input": text, "layer": n}   a generative model's (GPT, encoder-decoder) attention
                         weights of one layer (or all of a small model's), every head: the playground's heatmaps

Each answers `{"object": "list", "model", "data": [{"index": i, ...}, ...]}`, one item per input in input order,
and calls what the library already has (the task pipelines, `LM.transduce`) in the batcher's worker thread, so the
model has one caller at a time. An endpoint that does not fit the served checkpoint, an empty text, an empty or too
long list, an over-long input or a bad decoding option answers 4xx in OpenAI's error shape.

serve/app.py adds these routes (`add_task_routes`) and uses `Embedder` and `is_pipeline` to tell what a checkpoint
serves; this module builds on serve/protocol.py and serve/batching.py only, never on serve/app.py.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Callable
from typing import Literal

import torch
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from lmforge.errors import ConfigError, LmforgeError
from lmforge.explain import attentions, explain
from lmforge.models.bert import Bert
from lmforge.models.classifier import BackboneWithHead
from lmforge.models.gpt import GPT
from lmforge.serve.batching import Batcher, CallJob
from lmforge.serve.protocol import MAX_PROMPTS, ApiError, Limits, RequestBody, Served, until_answered
from lmforge.tasks.classify.encoding import TextEncoder
from lmforge.tasks.classify.pipeline import TextClassificationPipeline
from lmforge.tasks.ner.pipeline import TokenClassificationPipeline
from lmforge.tasks.qa.pipeline import QuestionAnsweringPipeline

MAX_TEXT_CHARS = 50_000  # one text, question or context (NER and QA read long texts in windows)
MAX_BEAMS = 16


# ---- request bodies --------------------------------------------------------------------------------------
class ClassifyRequest(RequestBody):
    model: str | None = None
    input: str | dict | list[str | dict]


class EmbeddingRequest(RequestBody):
    model: str | None = None
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


class NerRequest(RequestBody):
    model: str | None = None
    text: str | list[str]


class QAItem(RequestBody):
    model: str | None = None
    question: str
    context: str


class ExplainRequest(RequestBody):
    model: str | None = None
    input: str | dict
    method: Literal["ig", "shap"] = "ig"
    target: str | None = None
    samples: int = 64


MAX_EXPLAIN_SAMPLES = 512
# One answer's attention weights (layers x heads x queries x keys): about 20 MB of JSON.
MAX_ATTENTION_WEIGHTS = 2_000_000


class AttentionRequest(RequestBody):
    model: str | None = None
    input: str
    layer: int | None = None  # None: every layer, when they fit in MAX_ATTENTION_WEIGHTS


class TranslateRequest(RequestBody):
    model: str | None = None
    text: str | list[str]
    num_beams: int | None = None
    max_tokens: int | None = None


# ---- embeddings ------------------------------------------------------------------------------------------
class Embedder:
    """The mean of a model's final hidden states over the tokens of a text (padding left out).

    A text is framed as a classifier with that backbone reads it (`TextEncoder`): `[bos] text [eos]` for a BERT-style
    encoder, `text [eos]` for a GPT; a fine-tuned classifier or tagger embeds with its backbone (without its head).
    """

    def __init__(self, lm, backbone: str, hidden: Callable, block_size: int, width: int):
        self.lm, self.hidden, self.block_size, self.width = lm, hidden, block_size, width
        self.encoder = TextEncoder(
            lm.tokenizer, backbone, max_length=1 << 30
        )  # refused below rather than cut

    @classmethod
    def of(cls, lm) -> Embedder | None:
        """The embedder of a GPT or BERT-style checkpoint, or of a classifier's or tagger's backbone; else None."""
        model = lm.model
        if isinstance(model, BackboneWithHead):
            width = getattr(model.backbone, "width", None) or model.backbone.config.n_embd
            return cls(lm, model.config.backbone, model.hidden, model.config.block_size, width)
        if isinstance(model, GPT):
            return cls(
                lm,
                "gpt",
                lambda ids, mask, types: model.encode(ids),
                model.config.block_size,
                model.config.n_embd,
            )
        if isinstance(model, Bert):
            return cls(lm, "bert", model.encode, model.config.block_size, model.config.n_embd)
        return None

    def rows(self, texts: list[str]) -> list[tuple[list[int], list[int]]]:
        """The texts as the model reads them; ConfigError for one longer than the model's context."""
        rows = [self.encoder(t) for t in texts]
        for i, (ids, _) in enumerate(rows):
            if len(ids) > self.block_size:
                raise ConfigError(
                    f"input {i} is {len(ids)} tokens long but the model reads at most "
                    f"{self.block_size}; shorten it"
                )
        return rows

    def __call__(self, rows: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        """One vector per row of `rows()`."""
        ids, mask, types = self.encoder.batch(rows, self.lm.device)
        with torch.inference_mode():
            hidden = self.hidden(ids, mask, types).float()
        m = mask.unsqueeze(-1).float()
        return ((hidden * m).sum(1) / m.sum(1).clamp(min=1)).cpu().tolist()


def _encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return vector
    # OpenAI's base64: the little-endian float32 bytes (the official client asks for this by default)
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def is_pipeline(model) -> bool:
    """Whether `model` is a classify, ner or qa pipeline (what `lmforge.pipeline(...)` makes)."""
    return isinstance(
        model, (TextClassificationPipeline, TokenClassificationPipeline, QuestionAnsweringPipeline)
    )


# ---- checks and the worker -------------------------------------------------------------------------------
def texts_of(value: str | list, param: str, what: str = "text") -> list:
    """`value` as a list of 1 to MAX_PROMPTS inputs; each string input non-empty and at most MAX_TEXT_CHARS long."""
    items = value if isinstance(value, list) else [value]
    if not 1 <= len(items) <= MAX_PROMPTS:
        raise ApiError(
            400,
            f"{param} must be a {what} or a list of 1 to {MAX_PROMPTS} of them, got {len(items)}",
            param=param,
        )
    for i, item in enumerate(items):
        if isinstance(item, str):
            _check_text(item, param if len(items) == 1 else f"{param}.{i}")
    return items


def _check_text(text: str, param: str) -> None:
    if not text.strip():
        raise ApiError(400, f"{param} is empty", param=param)
    if len(text) > MAX_TEXT_CHARS:
        raise ApiError(
            400,
            f"{param} is {len(text):,} characters long; the limit is {MAX_TEXT_CHARS:,}",
            code="context_length_exceeded",
            param=param,
        )


async def run_in_worker(
    batcher: Batcher, fn: Callable[[], object], limits: Limits, param: str, request: Request
):
    """fn() in the batcher's worker thread; a user error it raises (over-long input, bad option) is a 400. A call
    still queued when its client hangs up or its time is up is never made."""
    try:
        return await until_answered(request, asyncio.wrap_future(batcher.submit(CallJob(fn))), limits.timeout)
    except LmforgeError as exc:
        raise ApiError(400, str(exc), param=param) from None


def listing(served: Served, data: list[dict], **extra) -> dict:
    return {"object": "list", "model": served.name, **extra, "data": data}


# ---- the routes ------------------------------------------------------------------------------------------
def add_task_routes(router: APIRouter, served: Served, batcher: Batcher, limits: Limits) -> None:
    @router.post("/classify")
    async def classify(req: ClassifyRequest, request: Request):
        served.require("classify")
        texts = texts_of(req.input, "input")
        clf = served.pipeline
        inputs = [{"text": t} if isinstance(t, str) else t for t in texts]
        predictions = await run_in_worker(batcher, lambda: clf(inputs, top_k=None), limits, "input", request)
        data = []
        for i, ranked in enumerate(predictions):
            item = {"index": i, "labels": ranked}
            if not clf.multi_label:
                item.update(ranked[0])  # the best label and its score
            data.append(item)
        return listing(served, data, multi_label=clf.multi_label)

    @router.post("/embeddings")
    async def embeddings(req: EmbeddingRequest, request: Request):
        served.require("embed")
        texts = texts_of(req.input, "input")
        embedder = served.embedder
        if req.dimensions is not None and req.dimensions != embedder.width:
            raise ApiError(
                400,
                f"this model's embeddings have {embedder.width} dimensions; dimensions cannot "
                f"change that (got {req.dimensions})",
                param="dimensions",
            )
        try:
            rows = await run_in_threadpool(embedder.rows, texts)  # tokenizing: off the event loop
        except ConfigError as exc:
            raise ApiError(400, str(exc), code="context_length_exceeded", param="input") from None
        vectors = await run_in_worker(batcher, lambda: embedder(rows), limits, "input", request)
        tokens = sum(len(ids) for ids, _ in rows)
        data = [
            {"object": "embedding", "index": i, "embedding": _encode_vector(v, req.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        return listing(served, data, usage={"prompt_tokens": tokens, "total_tokens": tokens})

    @router.post("/ner")
    async def ner(req: NerRequest, request: Request):
        served.require("ner")
        texts = texts_of(req.text, "text")
        entities = await run_in_worker(batcher, lambda: served.pipeline(texts), limits, "text", request)
        return listing(served, [{"index": i, "entities": e} for i, e in enumerate(entities)])

    @router.post("/qa")
    async def qa(req: QAItem | list[QAItem], request: Request):
        served.require("qa")
        items = texts_of(req, "body", "question-and-context object")
        for i, item in enumerate(items):
            where = "" if len(items) == 1 else f"{i}."
            _check_text(item.question, where + "question")
            _check_text(item.context, where + "context")
        pairs = [{"question": item.question, "context": item.context} for item in items]
        answers = await run_in_worker(batcher, lambda: served.pipeline(pairs), limits, "question", request)
        return listing(served, [{"index": i, **a} for i, a in enumerate(answers)])

    @router.post("/explain")
    async def explain_route(req: ExplainRequest, request: Request):
        served.require("ner" if served.kind == "ner" else "classify")
        text, pair = (
            (req.input, None)
            if isinstance(req.input, str)
            else (req.input.get("text"), req.input.get("text_pair"))
        )
        if not isinstance(text, str) or not isinstance(pair, (str, type(None))):
            raise ApiError(400, "input must be a text or {'text', 'text_pair'} with texts", param="input")
        _check_text(text, "input")
        if pair is not None:
            _check_text(pair, "input.text_pair")
        if not 1 <= req.samples <= MAX_EXPLAIN_SAMPLES:
            raise ApiError(
                400,
                f"samples must be between 1 and {MAX_EXPLAIN_SAMPLES}, got {req.samples}",
                param="samples",
            )

        def run():
            return explain(served.lm, text, req.method, req.target, pair, samples=req.samples)

        result = await run_in_worker(batcher, run, limits, "input", request)
        return {"object": "explanation", "model": served.name, **result.to_json()}

    @router.post("/attention")
    async def attention_route(req: AttentionRequest, request: Request):
        if served.kind not in ("translate", "summarize"):
            served.require("generate")
        _check_text(req.input, "input")

        def run():
            maps = attentions(served.lm, req.input)
            n_layer, n_head = len(maps.layer_numbers), len(maps.head_numbers)
            chosen = maps.select(layer=req.layer)  # ConfigError (400) for a layer the model lacks
            size = sum(m.numel() for layers in chosen.maps.values() for m in layers)
            if size > MAX_ATTENTION_WEIGHTS:
                raise ConfigError(
                    f"all {n_layer} layers' attention weights ({size:,}) exceed {MAX_ATTENTION_WEIGHTS:,}; ask "
                    "for one layer"
                )
            return {"layers": n_layer, "heads": n_head, "maps": chosen.to_json()}

        result = await run_in_worker(batcher, run, limits, "input", request)
        return {"object": "attention", "model": served.name, **result}

    for kind in ("translate", "summarize"):
        router.add_api_route(f"/{kind}", _seq2seq_route(kind, served, batcher, limits), methods=["POST"])


def _seq2seq_route(kind: str, served: Served, batcher: Batcher, limits: Limits):
    async def rewrite(req: TranslateRequest, request: Request):
        served.require(kind)
        texts = texts_of(req.text, "text")
        if req.num_beams is not None and not 1 <= req.num_beams <= MAX_BEAMS:
            raise ApiError(
                400, f"num_beams must be between 1 and {MAX_BEAMS}, got {req.num_beams}", param="num_beams"
            )
        if req.max_tokens is not None and not 1 <= req.max_tokens <= limits.max_tokens:
            raise ApiError(
                400,
                f"max_tokens must be between 1 and {limits.max_tokens}, got {req.max_tokens}",
                param="max_tokens",
            )
        beams = req.num_beams if req.num_beams and req.num_beams > 1 else None  # 1: greedy decoding

        def run():
            return served.lm.transduce(texts, max_new_tokens=req.max_tokens, num_beams=beams)

        outputs = await run_in_worker(batcher, run, limits, "text", request)
        return listing(served, [{"index": i, "text": t} for i, t in enumerate(outputs)])

    rewrite.__name__ = kind
    return rewrite
