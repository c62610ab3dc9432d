"""First token of a compiled decoder in a fresh process, with an empty and then a filled compile cache (issue 20).

    .venv/bin/python benchmarks/compile_cache.py [--shape 6x384] [--restarts 2] [--threads 2]

What a restarted `lmforge serve --compile true` pays before its first compiled token: each run is a new process
(imports, model build, then `generate_tokens(..., compile=True)` until its first one-token compiled step), all sharing
one fresh LMFORGE_COMPILE_CACHE folder, so the first run compiles from nothing and the later ones find PyTorch's
caches (inductor's FX graph cache, AOTAutograd's, autotuning results) filled. Prints JSON: seconds per run (total,
and the compile part: from the first decoding call to its second token) and the cache hits PyTorch counted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from common import emit, machine

SHAPES = {"6x384": (6, 384, 256, 65), "gpt2": (12, 768, 1024, 50257)}  # layers, width, block, vocab


def one(shape: str, threads: int) -> dict:
    start = time.perf_counter()
    import torch

    from lmforge.generate.sampling import SamplingParams, generate_tokens
    from lmforge.models.gpt import GPT, GPTConfig

    torch.set_num_threads(threads)
    n_layer, n_embd, block, vocab = SHAPES[shape]
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=n_layer, n_embd=n_embd)
    ).eval()
    prompt = torch.randint(vocab, (1, 16), generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    steps = generate_tokens(model, prompt, SamplingParams(max_new_tokens=3, temperature=0), compile=True)
    next(steps)  # the prompt's eager pass
    next(steps)  # the first compiled one-token step
    first = time.perf_counter()
    for _ in steps:
        pass
    from torch._dynamo.utils import counters

    hits = {
        k: v for group in ("inductor", "aot_autograd") for k, v in counters[group].items() if "cache" in k
    }
    return {
        "first_compiled_token_s": round(first - start, 1),
        "compile_s": round(first - t0, 1),
        "caches": hits,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=tuple(SHAPES), default="6x384")
    ap.add_argument("--restarts", type=int, default=2, help="runs after the first (cold) one")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.shape, args.threads)))
        return
    runs = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "LMFORGE_COMPILE_CACHE": cache}
        env.pop("TORCHINDUCTOR_CACHE_DIR", None)
        for i in range(1 + args.restarts):
            proc = subprocess.run(
                [sys.executable, __file__, "--one", "--shape", args.shape, "--threads", str(args.threads)],
                capture_output=True,
                text=True,
                env=env,
            )
            if proc.returncode:
                sys.exit(f"error: run {i} failed:\n{proc.stderr[-2000:]}")
            runs.append(
                {"cache": "empty" if i == 0 else "filled", **json.loads(proc.stdout.splitlines()[-1])}
            )
            print(runs[-1], flush=True)
    emit({"benchmark": "compile_cache", "shape": args.shape, "runs": runs, "machine": machine()})


if __name__ == "__main__":
    main()
