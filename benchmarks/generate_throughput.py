"""Generation throughput: lmforge against Hugging Face `generate` at equal shape, side by side.

    .venv/bin/python benchmarks/generate_throughput.py [--shape 6x384 --shape gpt2] [--rounds 3]

Random weights (speed does not depend on them), prompt of 16 random tokens + 128 new tokens (no early stop), batch
1 and 8, greedy and sampling (temperature 1, top-k 50). Each contender runs in its own worker process and they take
turns per round; the median of the rounds is reported. Time to first token is the prompt's forward pass plus the
first sampled token. Contenders: `hf` (GPT2LMHeadModel.generate with its KV cache, SDPA attention) and `lmforge`
(`generate_tokens`, lmforge's decoding loop with its preallocated KV cache); `--contender lmforge-int8` adds the model
that `lmforge quantize --method dynamic-int8 --include-output` makes (int8 weights read by fbgemm's kernel: the
batch-1 decode is memory-bound, and this reads a quarter of the bytes); `--contender lmforge-compiled` decodes with
`compile=True` (each one-token step through torch.compile; the warm-up round pays the compile); `lmforge-bf16` is
what `--dtype bf16` loads (bf16 weights and KV cache, Linear weights pre-packed for oneDNN's bf16 kernels:
models/inference.py; CPUs with bf16 units or CUDA), `lmforge-bf16-plain` the same without the packing,
`lmforge-compiled-bf16` bf16 weights with the compiled step (its products through the packed oneDNN kernel for
models with >= 32 MB of bf16 Linear weights, inductor's own below: models/inference.py COMPILED_PACK_MIN_BYTES),
`lmforge-compiled-bf16-packed` / `-inductor` the same with that choice forced one way, `lmforge-compiled-int8` the
dynamic int8 model with the compiled step.

The ceiling: a batch-1 step reads every weight once, so tokens/s cannot pass (read bandwidth) / (bytes of weights
read per token). A `bandwidth` worker, taking its turn with the others, times `torch.sum` over a buffer of each
contender's weight bytes (so a model that fits the L3 is held to the L3's speed, as it would be) and over one of
`--dram-mb` (past the last-level cache); each contender's row gives `of_ceiling`, its tokens/s as a fraction of
that bound (batch 1 only; weights only: the KV cache and activations add a few % at these lengths).

Shapes: 6x384 (6 layers x 384 wide, 6 heads, block 256, 65-token vocabulary) and gpt2 (GPT-2 124M: 12 x 768,
12 heads, block 1024, 50,257 tokens).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from common import ask, emit, machine, start_worker, stop_worker

CONTENDERS = (
    "hf",
    "lmforge",
    "lmforge-compiled",
    "lmforge-bf16",
    "lmforge-bf16-plain",
    "lmforge-compiled-bf16",
    "lmforge-compiled-bf16-packed",
    "lmforge-compiled-bf16-inductor",
    "lmforge-int8",
    "lmforge-compiled-int8",
)

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
    if kind.endswith("int8"):
        from lmforge.compress.quantize import quantize_model

        quantize_model(model, "dynamic-int8", include_output=True)
    if "bf16" in kind:
        from lmforge.models.inference import PackedLinear, to_inference_dtype

        to_inference_dtype(model, torch.bfloat16, pack=not kind.endswith("plain"))
        for module in model.modules():
            if isinstance(module, PackedLinear) and kind.endswith(("-packed", "-inductor")):
                module.compiled_packed = kind.endswith("-packed")
    return model


def weight_bytes(model) -> int:
    """Bytes of weights a batch-1 decoding step reads: every tensor once (a tied output matrix counts as the output
    layer, which reads all of it), except the embedding tables, of which a step reads one row."""
    from torch import nn

    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    heads = {id(getattr(m, "weight", None)) for name, m in model.named_modules() if name.endswith("head")}
    seen, total = set(), 0
    for t in (*model.parameters(), *model.buffers()):
        if id(t) in seen or (id(t) in tables and id(t) not in heads):
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def bandwidth_worker(sizes_mb: list[float], threads: int, conn) -> None:
    """Times a read (torch.sum) of buffers of the given sizes; replies {size_mb: GB/s} per request (median of 5)."""
    import torch

    torch.set_num_threads(threads)
    buffers = {mb: torch.ones(int(mb * 2**20) // 4) for mb in sizes_mb}
    conn.send({"sizes_mb": sizes_mb})
    while conn.recv() is not None:
        out = {}
        for mb, buf in buffers.items():
            buf.sum()  # warm: first touch, and the cache holds what fits, as a decode loop's would
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                buf.sum()
                times.append(time.perf_counter() - t0)
            out[mb] = buf.numel() * 4 / statistics.median(times) / 1e9
        conn.send(out)
    conn.close()


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
                model, prompt, params, torch.Generator().manual_seed(0), compile="compiled" in kind
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

    conn.send({"params": sum(p.numel() for p in model.parameters()), "weight_bytes": weight_bytes(model)})
    while (job := conn.recv()) is not None:
        conn.send(run(**job))
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", action="append", choices=tuple(SHAPES), help="default: both")
    ap.add_argument(
        "--contender",
        action="append",
        choices=CONTENDERS,
        help="default: hf and lmforge",
    )
    ap.add_argument(
        "--dram-mb", type=float, default=2048, help="size of the buffer read past the last-level cache (MB)"
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
        sizes = {k: w[2]["weight_bytes"] / 2**20 for k, w in workers.items()}
        bw = start_worker(bandwidth_worker, sorted({*sizes.values(), args.dram_mb}), threads)
        for batch in args.batch or [1, 8]:
            for greedy in (True, False):
                job = {"batch": batch, "greedy": greedy}
                for w in workers.values():  # warm-up: first calls allocate, compile and fill caches
                    ask(*w[:2], job)
                runs = {k: [] for k in contenders}
                reads = []
                for _ in range(args.rounds):
                    for k, w in workers.items():
                        runs[k].append(ask(*w[:2], job))
                    reads.append(ask(*bw[:2], "read"))
                gbps = {mb: statistics.median(r[mb] for r in reads) for mb in reads[0]}
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
                row["read_gb_per_s"] = {f"{mb:.0f} MB": round(v, 1) for mb, v in gbps.items()}
                if batch == 1:
                    for k in contenders:
                        ceiling = gbps[sizes[k]] * 1e9 / (sizes[k] * 2**20)
                        row[k]["weight_mb"] = round(sizes[k], 1)
                        row[k]["ceiling_tokens_per_s"] = round(ceiling, 1)
                        row[k]["of_ceiling"] = round(row[k]["tokens_per_s"] / ceiling, 2)
                        dram = gbps[args.dram_mb] * 1e9 / (sizes[k] * 2**20)
                        row[k]["of_dram_ceiling"] = round(row[k]["tokens_per_s"] / dram, 2)
                rows.append(row)
                print(row, flush=True)
        for w in (*workers.values(), bw):
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
