"""Decoding speed of the encoder-decoder: greedy and beam search, batch 1 and 16 (issue 5).

    .venv/bin/python benchmarks/decode_speed.py [--preset seq2seq-small] [--new-tokens 64] [--rounds 3]

A `seq2seq-small` model (3+3 layers x 256) with random weights (speed does not depend on them) and a byte-level
BPE tokenizer of 8,192 tokens trained on Multi30k's training sentences; the sources are Multi30k validation
sentences (German). Every output is forced to `--new-tokens` tokens (min = max new tokens), so each row decodes the
same number of steps. Prints JSON: output tokens/s (the best beam's tokens; beams cost more per output token) and
seconds per batch, the median of the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import emit, machine, peak_rss_mb, shared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="seq2seq-small")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import torch

    from lmforge.config import build_run_config
    from lmforge.lm import LM
    from lmforge.models.registry import build_model
    from lmforge.tokenizers import Tokenizer

    folder = shared("multi30k")
    lines = (folder / "train.de").read_text(encoding="utf-8").splitlines()
    lines += (folder / "train.en").read_text(encoding="utf-8").splitlines()
    tokenizer = Tokenizer.train("bpe", lines, vocab_size=8192)
    cfg = build_run_config(preset=args.preset, overrides={"model.vocab_size": tokenizer.vocab_size})
    torch.manual_seed(0)
    model = build_model(cfg.arch, cfg.model).eval()
    lm = LM(model, tokenizer, {"arch": cfg.arch, "model": cfg.to_dict()["model"]})
    sources = (folder / "val.de").read_text(encoding="utf-8").splitlines()[:16]
    rows = []
    for batch in (1, 16):
        for beams in (1, 4):

            def run(batch: int = batch, beams: int = beams) -> float:
                t0 = time.perf_counter()
                lm.transduce(
                    sources[:batch],
                    max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens,
                    num_beams=beams,
                )
                return time.perf_counter() - t0

            run()  # warm-up
            seconds = statistics.median(run() for _ in range(args.rounds))
            rows.append(
                {
                    "batch": batch,
                    "decoding": "greedy" if beams == 1 else f"beam {beams}",
                    "seconds_per_batch": round(seconds, 3),
                    "output_tokens_per_s": round(batch * args.new_tokens / seconds, 1),
                }
            )
            print(rows[-1], flush=True)
    emit(
        {
            "benchmark": "decode_speed",
            "preset": args.preset,
            "params": sum(p.numel() for p in model.parameters()),
            "new_tokens": args.new_tokens,
            "results": rows,
            "peak_rss_mb": round(peak_rss_mb()),
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
