"""First token of a restarted `lmforge serve --compile true` (issue 20: "first token of a compiled server <= 5 s
after a restart"), against `--compile false`.

    .venv/bin/python benchmarks/serve_restart.py [--shape 6x384] [--restarts 2] [--tokens 64] [--port 8765]

A random GPT of --shape (character vocabulary of 65, as tiny Shakespeare's) is saved as a checkpoint. Each run
starts a fresh `lmforge serve CKPT --compile true|false` process; every compiled run shares one fresh
LMFORGE_COMPILE_CACHE folder, so the first compiled run compiles from nothing and the later ones (the restarts)
find PyTorch's caches filled. Per run: seconds from the process's start to the answer of its first one-token
completion (what a client waiting on a restarted server sees; the server compiles in a background thread from its
start and answers eagerly meanwhile), seconds until /health reports "decoding": "compiled", and the decoding speed
of a --tokens greedy completion right after the first answer (eager, or while compiling) and once compiled.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from common import REPO, emit, machine

SHAPES = {"6x384": (6, 384, 256), "gpt2": (12, 768, 1024)}  # layers, width, block


def make_checkpoint(folder: Path, shape: str) -> Path:
    import torch

    from lmforge.checkpoint import save_checkpoint
    from lmforge.models.registry import build_model
    from lmforge.tokenizers import Tokenizer

    n_layer, n_embd, block = SHAPES[shape]
    tok = Tokenizer.train("char", ["abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,;:!?'-\n&$3"])
    torch.manual_seed(0)
    cfg = dict(n_layer=n_layer, n_head=n_layer, n_embd=n_embd, block_size=block, vocab_size=tok.vocab_size)
    model = build_model("gpt", cfg)
    return save_checkpoint(
        folder / shape, model, tok, {"arch": "gpt", "model": dataclasses.asdict(model.config)}
    )


def call(port: int, path: str, body: dict | None = None, timeout: float = 600) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def completion_seconds(port: int, tokens: int) -> float:
    start = time.perf_counter()
    call(port, "/v1/completions", {"prompt": "ROMEO:", "max_tokens": tokens, "temperature": 0})
    return time.perf_counter() - start


def one_run(ckpt: Path, compile_: str, port: int, tokens: int, env: dict) -> dict:
    start = time.perf_counter()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "lmforge"),
            "serve",
            str(ckpt),
            "--port",
            str(port),
            "--compile",
            compile_,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while True:  # the server is up once it answers
            try:
                call(port, "/health", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError):
                if server.poll() is not None:
                    sys.exit(f"error: the server exited:\n{server.stderr.read()[-2000:]}")
                time.sleep(0.05)
        up = time.perf_counter() - start
        call(port, "/v1/completions", {"prompt": "ROMEO:", "max_tokens": 1, "temperature": 0})
        first = time.perf_counter() - start
        early = tokens / completion_seconds(port, tokens)
        status = call(port, "/health")["decoding"]
        while status == "compiling":
            time.sleep(0.2)
            status = call(port, "/health")["decoding"]
        ready = time.perf_counter() - start
        steady = tokens / completion_seconds(port, tokens)
        return {
            "compile": compile_,
            "server_up_s": round(up, 2),
            "first_token_s": round(first, 2),
            "early_tokens_per_s": round(early, 1),
            "decoding": status,
            "compiled_after_s": round(ready, 1) if compile_ == "true" else None,
            "steady_tokens_per_s": round(steady, 1),
        }
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=tuple(SHAPES), default="6x384")
    ap.add_argument("--restarts", type=int, default=2, help="compiled runs after the first (cold) one")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens of the timed completions")
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as work:
        ckpt = make_checkpoint(Path(work), args.shape)
        env = {**os.environ, "LMFORGE_COMPILE_CACHE": str(Path(work) / "cache")}
        env.pop("TORCHINDUCTOR_CACHE_DIR", None)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
        plan = [("false", "-")] + [("true", "empty")] + [("true", "filled")] * args.restarts
        for compile_, cache in plan:
            runs.append({"cache": cache, **one_run(ckpt, compile_, args.port, args.tokens, env)})
            print(runs[-1], flush=True)
    emit({"benchmark": "serve_restart", "shape": args.shape, "runs": runs, "machine": machine()})


if __name__ == "__main__":
    main()
