"""nanoGPT's CPU recipe through lmforge: tiny Shakespeare, character level, 4x128, block 64, batch 12, 2000 steps.

    .venv/bin/python benchmarks/recipe_shakespeare.py [--max-steps 2000] [--out /tmp/lmforge-shakespeare]
    .venv/bin/python benchmarks/recipe_shakespeare.py --fast
    .venv/bin/python benchmarks/recipe_shakespeare.py --precision bf16 --seed 1   # see bf16_parity.py

`--fast` trains the same model (4 layers x 128 wide, 4 heads, block 64: the same parameters) with lmforge's
fastest configuration that reaches nanoGPT's validation loss of 1.886: configs/shakespeare-char-fast.yaml.

Prints JSON: wall time of training, tokens/s, final validation loss on the whole validation split (the last 10%
of the characters, as nanoGPT splits it), and peak memory.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from common import REPO, emit, machine, peak_rss_mb, shared


def nanogpt_style_estimate(ckpt: Path, data: Path, eval_iters: int = 20, seed: int = 0) -> float:
    """nanoGPT's estimate_loss(): the mean loss of `eval_iters` random batches of 12 x 64 from the validation split
    (what its published 1.88 is). Our `final_val_loss` scores every validation token instead."""
    import torch
    import torch.nn.functional as F

    import lmforge
    from lmforge.data.shards import TokenShards

    lm = lmforge.load(ckpt)
    val = TokenShards(data, "val")
    gen = torch.Generator().manual_seed(seed)
    losses = []
    with torch.no_grad():
        for _ in range(eval_iters):
            x, y = val.sample_batch(12, 64, gen)
            logits = lm.model(x)
            losses.append(F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1)).item())
    return sum(losses) / len(losses)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--fast", action="store_true", help="configs/shakespeare-char-fast.yaml instead of the recipe"
    )
    ap.add_argument("--max-steps", type=int, default=None, help="default: the config's")
    ap.add_argument("--out", default="/tmp/lmforge-shakespeare")
    ap.add_argument(
        "--compile",
        choices=("auto", "true", "false"),
        default=None,
        help="train.compile (default: the config's)",
    )
    ap.add_argument("--seed", type=int, default=1337, help="train.seed (nanoGPT's default is 1337)")
    ap.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default=None,
        help="train.precision (default: the config's); the final evaluation runs in fp32 either way",
    )
    ap.add_argument("--threads", type=int, default=None, help="train.threads (default: torch's choice)")
    args = ap.parse_args()

    import lmforge
    from lmforge.eval.perplexity import evaluate

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    data = out / "data"
    lmforge.prepare(
        [str(shared("tinyshakespeare/input.txt"))],
        str(data),
        tokenizer="char",
        split="tail",
        val_fraction=0.1,
        progress=False,
    )
    config = "shakespeare-char-fast.yaml" if args.fast else "shakespeare-char.yaml"
    overrides = {"train.tensorboard": False, "train.seed": args.seed}
    if args.compile is not None:
        overrides["train.compile"] = args.compile
    if args.precision is not None:
        overrides["train.precision"] = args.precision
    if args.threads is not None:
        overrides["train.threads"] = args.threads
    start = time.perf_counter()
    result = lmforge.pretrain(
        data=str(data),
        out=str(out / "run"),
        config=str(REPO / "configs" / config),
        max_steps=args.max_steps,
        overrides=overrides,
        progress=False,
    )
    wall = time.perf_counter() - start
    final = evaluate(out / "run" / "latest", str(data))
    estimate = nanogpt_style_estimate(out / "run" / "latest", data)
    emit(
        {
            "benchmark": "recipe_shakespeare" + (" --fast" if args.fast else " (nanoGPT's CPU recipe)"),
            "config": config,
            "steps": result.step,
            "seed": args.seed,
            "precision": overrides.get("train.precision", "config"),
            "train_seconds": round(result.seconds, 1),
            "wall_seconds_incl_evals_and_checkpoints": round(wall, 1),
            "tokens_per_s": round(result.tokens_per_s),
            "final_val_loss": round(final["loss"], 4),
            "final_val_bits_per_byte": round(final["bits_per_byte"], 4),
            "nanogpt_style_val_loss_estimate": round(estimate, 4),
            "val_tokens": final["tokens"],
            "peak_rss_mb": round(peak_rss_mb()),
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
