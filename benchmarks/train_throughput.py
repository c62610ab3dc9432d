"""Training throughput: lmforge's GPT against Hugging Face `GPT2LMHeadModel` at equal shape, side by side.

    .venv/bin/python benchmarks/train_throughput.py [--shape 4x128 --shape 6x384] [--rounds 5] [--steps 10]

Each contender lives in its own worker process (so each has its own peak RSS and compile state) and they take
turns: `--rounds` rounds of `--steps` optimizer steps each, A then B then C, after a warm-up. The same loop for
all: random token batches, AdamW (foreach), loss, backward, clip 1.0, step, zero_grad(set_to_none). Contenders:
`hf` (eager, SDPA attention), `lmforge` (eager, lmforge's default on a CPU) and `lmforge-compile` (torch.compile,
its default on CUDA), and `lmforge-bf16` (eager under bf16 autocast, what `train.precision bf16` does; CPUs with bf16
instructions only). lmforge's contenders keep freed memory in malloc as its trainer does on a CPU
(`train.keep_freed_memory`); `lmforge-nokeep` is lmforge without that, `hf-keep` HF with it. `--autocast bf16` runs
every contender's forward under bf16 autocast. Prints JSON: median tokens/s per contender, the ratio to HF, and model FLOPs utilisation against an
fp32 matmul peak measured in the same run.

Shapes are LAYERSxWIDTH[:BLOCK:BATCH] with as many heads as layers (as nanoGPT's configs); 4x128 means 4 layers x
128 wide, block 64, batch 12 (nanoGPT's CPU recipe), 6x384 means block 256, batch 8; the vocabulary is 65
characters as in tiny Shakespeare.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import ask, emit, machine, start_worker, stop_worker

DEFAULT_SHAPES = {"4x128": (4, 128, 64, 12), "6x384": (6, 384, 256, 8)}  # layers, width, block, batch
VOCAB = 65


def parse_shape(text: str) -> tuple[int, int, int, int]:
    if text in DEFAULT_SHAPES:
        return DEFAULT_SHAPES[text]
    try:
        dims, *rest = text.split(":")
        n_layer, n_embd = (int(v) for v in dims.split("x"))
        block, batch = (int(v) for v in rest) if rest else (256, 8)
    except ValueError:
        raise SystemExit(
            f"error: --shape {text!r} is not LAYERSxWIDTH[:BLOCK:BATCH], e.g. 6x384:256:8"
        ) from None
    return n_layer, n_embd, block, batch


def matmul_peak_gflops(size: int = 2048, seconds: float = 3.0) -> float:
    """Best fp32 GFLOP/s of a square matmul on this machine with torch's threads."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        for _ in range(5):
            torch.mm(a, b)
        best = max(best, 5 * 2 * size**3 / (time.perf_counter() - t0) / 1e9)
    return best


def build(kind: str, shape: tuple[int, int, int, int]):
    """The model of one contender, and its training FLOPs per token (the same formula for all)."""
    import torch

    n_layer, n_embd, block, _ = shape
    n_head = n_layer  # as nanoGPT's configs and GPT-2 124M (12 x 12) have it
    if kind.startswith("hf"):
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(
            vocab_size=VOCAB,
            n_positions=block,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
            attn_implementation="sdpa",
        )
        model = GPT2LMHeadModel(cfg)

        def loss_fn(x, y):
            return model(input_ids=x, labels=None).logits
    else:
        from lmforge.models.gpt import GPT, GPTConfig

        model = GPT(
            GPTConfig(vocab_size=VOCAB, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
        )

        def loss_fn(x, y):
            return model(x)

    matmul_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    if kind.startswith("hf"):  # HF's GPT-2 uses Conv1D for its projections; count them the same way
        from transformers.pytorch_utils import Conv1D

        matmul_params += sum(m.weight.numel() for m in model.modules() if isinstance(m, Conv1D))
    flops = 3 * (2 * matmul_params + 2 * 2 * n_layer * block * n_embd)
    return model, loss_fn, flops


def worker(kind: str, shape, threads: int, autocast: str | None, conn) -> None:
    import contextlib
    import resource

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    if kind.startswith("lmforge") and kind != "lmforge-nokeep" or kind == "hf-keep":
        from lmforge.device import keep_freed_memory

        keep_freed_memory()  # what the trainer does on a CPU (train.keep_freed_memory)
    torch.manual_seed(0)
    model, forward, flops = build(kind, shape)
    model.train()
    step_forward = forward
    if kind == "lmforge-compile":
        compiled = torch.compile(model)

        def step_forward(x, y):
            return compiled(x)

    from lmforge.config import OptimConfig
    from lmforge.train.optim import build_optimizer

    opt = build_optimizer(model, OptimConfig(lr=1e-3, weight_decay=0.1), torch.device("cpu"))
    _, _, block, batch = shape
    gen = torch.Generator().manual_seed(1)

    def train_steps(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            data = torch.randint(VOCAB, (batch, block + 1), generator=gen)
            x, y = data[:, :-1], data[:, 1:]
            with (
                torch.autocast("cpu", dtype=torch.bfloat16)
                if autocast == "bf16" or kind == "lmforge-bf16"
                else contextlib.nullcontext()
            ):
                logits = step_forward(x, y)
            loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        loss.item()  # one sync per round, as a trainer that logs every N steps would
        return time.perf_counter() - t0

    conn.send({"params": sum(p.numel() for p in model.parameters()), "flops_per_token": flops})
    while True:
        n = conn.recv()
        if n is None:
            break
        conn.send(
            {
                "seconds": train_steps(n),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    conn.close()


def run_shape(
    name: str,
    shape,
    contenders: list[str],
    rounds: int,
    steps: int,
    warmup: int,
    threads: int,
    autocast: str | None = None,
) -> dict:
    import torch

    torch.set_num_threads(threads)
    peak = matmul_peak_gflops()  # before the workers exist, and again after them: the better of the two
    workers = {kind: start_worker(worker, kind, shape, threads, autocast) for kind in contenders}
    _, _, block, batch = shape
    times: dict[str, list[float]] = {k: [] for k in contenders}
    rss = {}
    for kind in contenders:  # warm-up (and compilation) outside the timed rounds
        ask(*workers[kind][:2], warmup)
    for _ in range(rounds):
        for kind in contenders:
            reply = ask(*workers[kind][:2], steps)
            times[kind].append(reply["seconds"])
            rss[kind] = reply["peak_rss_mb"]
    for w in workers.values():
        stop_worker(*w)
    peak = max(peak, matmul_peak_gflops())
    rows = {}
    for kind in contenders:
        tps = steps * batch * block / statistics.median(times[kind])
        flops = workers[kind][2]["flops_per_token"]
        rows[kind] = {
            "tokens_per_s": round(tps),
            "tokens_per_s_per_round": [round(steps * batch * block / t) for t in times[kind]],
            "params": workers[kind][2]["params"],
            "mfu": round(tps * flops / (peak * 1e9), 3),
            "peak_rss_mb": round(rss[kind]),
        }
    if "hf" in rows:
        for kind in contenders:
            rows[kind]["ratio_to_hf"] = round(rows[kind]["tokens_per_s"] / rows["hf"]["tokens_per_s"], 2)
    n_layer, n_embd, _, _ = shape
    return {
        "shape": name,
        "n_layer": n_layer,
        "n_embd": n_embd,
        "block": block,
        "batch": batch,
        "matmul_peak_gflops": round(peak, 1),
        "results": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--shape", action="append", help="LAYERSxWIDTH[:BLOCK:BATCH] or 4x128 / 6x384 (repeatable)"
    )
    ap.add_argument(
        "--contender",
        action="append",
        choices=("hf", "lmforge", "lmforge-compile", "lmforge-bf16", "lmforge-nokeep", "hf-keep"),
        help="default: all three",
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: all cores)")
    ap.add_argument(
        "--autocast",
        choices=("bf16",),
        help="every contender's forward under bf16 autocast (CPUs with "
        "bf16 instructions only; MFU stays against the fp32 peak)",
    )
    args = ap.parse_args()
    import os

    threads = args.threads or os.cpu_count() or 1
    contenders = args.contender or ["hf", "lmforge", "lmforge-compile"]
    shapes = args.shape or list(DEFAULT_SHAPES)
    emit(
        {
            "benchmark": "train_throughput",
            "steps_per_round": args.steps,
            "rounds": args.rounds,
            "autocast": args.autocast,
            "shapes": [
                run_shape(
                    s,
                    parse_shape(s),
                    contenders,
                    args.rounds,
                    args.steps,
                    args.warmup,
                    threads,
                    args.autocast,
                )
                for s in shapes
            ],
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
