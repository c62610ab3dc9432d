"""`lmforge serve`: an OpenAI-compatible HTTP server for a checkpoint, with a playground page."""

from __future__ import annotations

import math

from lmforge.cli.common import add_compile_option, add_dtype_option, add_verb

EXAMPLES = """\
  lmforge serve run                                  # then open http://127.0.0.1:8000/
  lmforge serve run --port 8080 --api-key secret --max-batch-size 16
  lmforge serve sst2-run/best                        # a fine-tuned classifier: POST /v1/classify
  lmforge serve de-en/best                           # a translate fine-tune (seq2seq or gpt): POST /v1/translate
  curl localhost:8000/v1/translate -H 'Content-Type: application/json' -d '{"text": "ein Haus", "num_beams": 4}'
  curl localhost:8000/v1/embeddings -H 'Content-Type: application/json' -d '{"input": ["a text", "another"]}'
  curl localhost:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"prompt": "Once upon a time", "max_tokens": 50, "temperature": 0}'
"""

DESCRIPTION = """\
Serve a checkpoint over HTTP. A language model answers OpenAI's /v1/completions and /v1/chat/completions (with
"stream": true as server-sent events), so OpenAI clients work with base_url http://HOST:PORT/v1. A fine-tuned task
model answers its task's endpoint: a classifier (or NLI model) /v1/classify, an NER tagger /v1/ner, an extractive QA
model /v1/qa, a translate or summarize fine-tune (encoder-decoder or gpt) /v1/translate or /v1/summarize. GPT and
BERT-style checkpoints, and classifiers' and taggers' backbones, also answer OpenAI's /v1/embeddings. Also
/v1/models, /health (which lists the model's endpoints), Prometheus /metrics and a playground page at /.
Concurrent requests with the same sampling settings are decoded together (dynamic batching)."""


def register(subparsers) -> None:
    p = add_verb(
        subparsers,
        "serve",
        help="serve a checkpoint over an OpenAI-compatible HTTP API",
        description=DESCRIPTION,
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint folder or run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key", help="require 'Authorization: Bearer KEY' on /v1/* (default: $LMFORGE_API_KEY)"
    )
    p.add_argument(
        "--max-batch-size", type=int, default=8, help="most requests decoded together (1: no batching)"
    )
    p.add_argument("--batch-window-ms", type=float, default=10.0, help="how long a request waits for others")
    p.add_argument(
        "--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask for"
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, help="seconds a request may take before it is stopped"
    )
    p.add_argument(
        "--allowed-hosts",
        help="comma-separated Host names to answer besides localhost, 127.0.0.1 and [::1] ('*': any); "
        "needed behind a proxy or for a LAN name when the server is reached on a loopback address",
    )
    p.add_argument(
        "--body-timeout", type=float, default=10.0, help="seconds a client may take to send a request body"
    )
    p.add_argument(
        "--keep-alive-timeout", type=float, default=5.0, help="seconds an idle connection stays open"
    )
    p.add_argument("--device", default="auto")
    add_compile_option(p)
    add_dtype_option(p, " of a language model (task models run in fp32)")


def run(args) -> int:
    from lmforge.errors import ConfigError
    from lmforge.extras import require

    uvicorn = require("uvicorn", extra="serve", feature="lmforge serve")
    require("fastapi", extra="serve", feature="lmforge serve")
    from lmforge.serve import create_app, server_config

    if args.max_batch_size < 1 or args.max_tokens_limit < 1 or not 0 < args.port < 65536:
        raise ConfigError("--max-batch-size and --max-tokens-limit must be positive, --port 1 to 65535")
    for flag, value, least in (
        ("--timeout", args.timeout, None),
        ("--batch-window-ms", args.batch_window_ms, 0),
        ("--body-timeout", args.body_timeout, None),
        ("--keep-alive-timeout", args.keep_alive_timeout, None),
    ):
        if not (math.isfinite(value) and (value > 0 if least is None else value >= least)):  # NaN fails too
            raise ConfigError(
                f"{flag} must be a finite number {'> 0' if least is None else '>= 0'}, got {value}"
            )
    hosts = [h.strip() for h in args.allowed_hosts.split(",") if h.strip()] if args.allowed_hosts else None
    app = create_app(
        args.ckpt,
        api_key=args.api_key,
        max_batch_size=args.max_batch_size,
        batch_window=args.batch_window_ms / 1000,
        max_tokens_limit=args.max_tokens_limit,
        timeout=args.timeout,
        device=args.device,
        compile=args.compile,
        dtype=args.dtype,
        allowed_hosts=hosts,
        body_timeout=args.body_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
    )
    print(f"serving {app.state.served.name} ({app.state.served.kind}) on http://{args.host}:{args.port}/")
    uvicorn.Server(server_config(app, args.host, args.port, log_level="info")).run()
    return 0
