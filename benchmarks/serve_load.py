"""Load test of `lmforge serve`: concurrent clients against a real uvicorn server, with and without batching.

    .venv/bin/python benchmarks/serve_load.py [--clients 16] [--seconds 10] [--max-tokens 32] [--batch-sizes 1,8]

Makes a random (untrained) GPT checkpoint itself, so the texts are noise but the work per token is real. For each
--max-batch-size, starts a server on a free loopback port and lets N client threads send greedy, non-streaming
completions back to back for a bounded time. All prompts have the same token length, the case that batching
decodes together. Prints JSON: p50/p95/p99 latency, requests/s, generated tokens/s, errors and the server's batch
counters, for each batch size.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from common import emit, machine


def make_checkpoint(folder: Path, n_layer: int, n_embd: int) -> Path:
    import torch

    from lmforge.checkpoint import save_checkpoint
    from lmforge.models.registry import build_model
    from lmforge.tokenizers import Tokenizer

    tok = Tokenizer.train("char", ["abcdefghijklmnopqrstuvwxyz .,\n"])
    torch.manual_seed(0)
    model = build_model(
        "gpt", dict(vocab_size=tok.vocab_size, block_size=256, n_layer=n_layer, n_head=4, n_embd=n_embd)
    )
    return save_checkpoint(
        folder / "gpt", model, tok, {"arch": "gpt", "model": dataclasses.asdict(model.config)}
    )


def start_server(app):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def load(url: str, clients: int, seconds: float, max_tokens: int) -> dict:
    import httpx

    latencies: list[float] = []
    tokens, errors = [0], [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(i: int) -> None:
        rng = random.Random(i)
        with httpx.Client(base_url=url, timeout=120) as http:
            while time.monotonic() < stop_at:
                prompt = "".join(rng.choice("abcdefghij") for _ in range(12))
                t0 = time.perf_counter()
                try:
                    r = http.post(
                        "/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
                    )
                    ok = r.status_code == 200
                    n = r.json()["usage"]["completion_tokens"] if ok else 0
                except httpx.HTTPError:
                    ok, n = False, 0
                with lock:
                    if ok:
                        latencies.append(time.perf_counter() - t0)
                        tokens[0] += n
                    else:
                        errors[0] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {
        "requests": len(latencies),
        "errors": errors[0],
        "wall_seconds": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 2),
        "generated_tokens_per_s": round(tokens[0] / wall, 1),
        "latency_p50_ms": round(q[49] * 1000, 1),
        "latency_p95_ms": round(q[94] * 1000, 1),
        "latency_p99_ms": round(q[98] * 1000, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0, help="load time for each batch size")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-sizes", default="1,8", help="comma-separated --max-batch-size values to compare")
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    args = ap.parse_args()

    from lmforge.serve import create_app

    results = {
        "machine": machine(),
        "clients": args.clients,
        "seconds": args.seconds,
        "max_tokens": args.max_tokens,
        "model": f"random gpt {args.n_layer}x{args.n_embd}, char",
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp), args.n_layer, args.n_embd)
        for size in [int(s) for s in args.batch_sizes.split(",")]:
            app = create_app(str(ckpt), api_key="", max_batch_size=size)
            server, thread, sock, url = start_server(app)
            try:
                run = load(url, args.clients, args.seconds, args.max_tokens)
            finally:
                server.should_exit = True
                thread.join(timeout=30)
                sock.close()
            stats = app.state.batcher.stats
            run.update(
                decode_calls=stats.batches,
                batched_requests=stats.batched_requests,
                largest_batch=stats.largest_batch,
            )
            results["runs"][f"max_batch_size={size}"] = run
    emit(results)


if __name__ == "__main__":
    main()
