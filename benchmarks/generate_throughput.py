"""Generation throughput: lmforge against Hugging Face `generate` at equal shape, side by side.

    .venv/bin/python benchmarks/generate_throughput.py [--shape 6x384 --shape gpt2] [--rounds 3]

Random weights (speed does not depend on them), prompt of 16 random tokens + 128 new tokens (no early stop), batch
1 and 8, greedy and sampling (temperature 1, top-k 50). Each contender runs in its own worker process and they take
turns per round; the median of the rounds is reported. Time to first token is the prompt's forward pass plus the
first sampled token. Contenders: `hf` (GPT2LMHeadModel.generate with its KV cache, SDPA attention) and `lmforge`
(`generate_tokens`, lmforge's decoding loop with its preallocated KV cache); `--contender lmforge-int8` adds the model
that `lmforge quantize --method dynamic-int8 --include-output` makes (int8 weights read by fbgemm's kernel: the
batch-1 decode is memory-bound, and this reads a quarter of the bytes); `--contender lmforge-compiled` decodes with
`compile=True` (each one-token step through torch.compile; the warm-up round pays the compile).

Shapes: 6x384 (6 layers x 384 wide, 6 heads, block 256, 65-token vocabulary) and gpt2 (GPT-2 124M: 12 x 768,
12 heads, block 1024, 50,257 tokens).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from common import ask, emit, machine, start_worker, stop_worker

SHAPES = {"6x384": (6, 384, 256, 65), "gpt2": (12, 768, 1024, 50257)}  # layers, width, block, vocab
PROMPT, NEW = 16, 128


def build(kind: str, shape):
    import torch

    n_layer, n_embd, block, vocab = shape
    torch.manual_seed(0)
    if kind == "hf":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(
            vocab_size=vocab,
            n_positions=block,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_layer,
            bos_token_id=0,
            eos_token_id=0,
            attn_implementation="sdpa",
        )
        return GPT2LMHeadModel(cfg).eval()
    from lmforge.models.gpt import GPT, GPTConfig

    model = GPT(
        GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=n_layer, n_embd=n_embd)
    ).eval()
    if kind == "lmforge-int8":
        from lmforge.compress.quantize import quantize_model

        quantize_model(model, "dynamic-int8", include_output=True)
    return model


def worker(kind: str, shape, threads: int, conn) -> None:
    import resource

    import torch

    torch.set_num_threads(threads)
    model = build(kind, shape)
    vocab = shape[3]

    def run(batch: int, greedy: bool) -> dict:
        prompt = torch.randint(vocab, (batch, PROMPT), generator=torch.Generator().manual_seed(batch))
        t0 = time.perf_counter()
        if kind == "hf":
            options = dict(
                do_sample=not greedy, top_k=50 if not greedy else None, pad_token_id=0, eos_token_id=None
            )
            with torch.no_grad():
                model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=1, **options)
                ttft = time.perf_counter() - t0
                t0 = time.perf_counter()
                out = model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=NEW,
                    min_new_tokens=NEW,
                    **options,
                )
            n = out.shape[1] - PROMPT
        else:
            from lmforge.generate.sampling import SamplingParams, generate_tokens

            params = SamplingParams(
                max_new_tokens=NEW, temperature=0.0 if greedy else 1.0, top_k=None if greedy else 50
            )
            steps = generate_tokens(
                model, prompt, params, torch.Generator().manual_seed(0), compile=kind == "lmforge-compiled"
            )
            next(steps)
            ttft = time.perf_counter() - t0
            n = 1 + sum(1 for _ in steps)
        seconds = (
            time.perf_counter() - t0
        )  # HF: its whole generate call; lmforge: from before the first token
        return {
            "ttft": ttft,
            "seconds": seconds,
            "tokens": n * batch,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }

    conn.send({"params": sum(p.numel() for p in model.parameters())})
    while (job := conn.recv()) is not None:
        conn.send(run(**job))
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", action="append", choices=tuple(SHAPES), help="default: both")
    ap.add_argument(
        "--contender",
        action="append",
        choices=("hf", "lmforge", "lmforge-compiled", "lmforge-int8"),
        help="default: hf and lmforge",
    )
    ap.add_argument("--batch", action="append", type=int, help="default: 1 and 8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: all cores)")
    args = ap.parse_args()
    threads = args.threads or os.cpu_count() or 1
    contenders = args.contender or ["hf", "lmforge"]
    rows = []
    for shape_name in args.shape or list(SHAPES):
        shape = SHAPES[shape_name]
        workers = {k: start_worker(worker, k, shape, threads) for k in contenders}
        for batch in args.batch or [1, 8]:
            for greedy in (True, False):
                job = {"batch": batch, "greedy": greedy}
                for w in workers.values():  # warm-up: first calls allocate, compile and fill caches
                    ask(*w[:2], job)
                runs = {k: [] for k in contenders}
                for _ in range(args.rounds):
                    for k, w in workers.items():
                        runs[k].append(ask(*w[:2], job))
                row = {
                    "shape": shape_name,
                    "batch": batch,
                    "decoding": "greedy" if greedy else "top-k 50 sampling",
                }
                for k, rs in runs.items():
                    row[k] = {
                        "tokens_per_s": round(statistics.median(r["tokens"] / r["seconds"] for r in rs), 1),
                        "ttft_ms": round(1000 * statistics.median(r["ttft"] for r in rs), 1),
                        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in rs)),
                    }
                if "hf" in runs:
                    for k in contenders:
                        row[k]["ratio_to_hf"] = round(row[k]["tokens_per_s"] / row["hf"]["tokens_per_s"], 2)
                rows.append(row)
                print(row, flush=True)
        for w in workers.values():
            stop_worker(*w)
    emit(
        {
            "benchmark": "generate_throughput",
            "prompt_tokens": PROMPT,
            "new_tokens": NEW,
            "rounds": args.rounds,
            "results": rows,
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
