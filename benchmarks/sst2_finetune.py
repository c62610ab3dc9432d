"""SST-2 sentiment: the real MiniLM encoder fine-tuned in full and with LoRA, next to a BiLSTM trained from scratch.

    .venv/bin/python benchmarks/sst2_finetune.py [--max-examples 8000] [--epochs 1] [--max-length 64]
        [--runs minilm-full,minilm-lora,lstm] [--max-minutes 15] [--out /tmp/lmforge-sst2]

Trains on the first N examples of sst2/train.tsv (the GLUE train set, re-split by ALPS) and scores the official
GLUE dev set (sst2/glue_dev.tsv, 872 sentences). Prints JSON: dev accuracy / macro-F1, training time, examples/s
and the peak memory of each run (each in its own process, so the peaks do not mix).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from common import emit, import_minilm, machine, peak_rss_mb, run_alternating, shared


def one_run(args) -> dict:

    import lmforge
    from lmforge.tasks.classify.examples import Fields

    out = Path(args.out) / args.one
    shutil.rmtree(out, ignore_errors=True)
    model = "lstm"
    if args.one.startswith("minilm"):
        model = str(import_minilm(out / "minilm"))
    start = time.perf_counter()
    result = lmforge.finetune(
        "classify",
        model,
        shared("sst2/train.tsv"),
        out / "run",
        dev=shared("sst2/glue_dev.tsv"),
        fields=Fields(text="sentence", label="label"),
        epochs=args.epochs,
        max_examples=args.max_examples,
        max_length=args.max_length,
        batch_size=args.batch_size,
        lora=args.one.endswith("lora"),
        max_minutes=args.max_minutes,
        seed=args.seed,
        overrides={"train.eval_every": 10**9},
        progress=False,
    )
    wall = time.perf_counter() - start
    seen = min(result.step * args.batch_size, args.epochs * args.max_examples)
    return {
        "run": args.one,
        "train_examples": args.max_examples,
        "steps": result.step,
        "stop_reason": result.stop_reason,
        "train_seconds": round(result.seconds, 1),
        "wall_seconds": round(wall, 1),
        "examples_per_s": round(seen / max(result.seconds, 1e-9), 1),
        "dev_accuracy": round(result.metrics["val_accuracy"], 4),
        "dev_macro_f1": round(result.metrics["val_macro_f1"], 4),
        "dev_roc_auc": round(result.metrics.get("val_roc_auc", float("nan")), 4),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="minilm-full,minilm-lora,lstm")
    ap.add_argument("--max-examples", type=int, default=8000)
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-minutes", type=float, help="cap on each run's training time")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/lmforge-sst2")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration in this process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_run(args)))
        return
    options = [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(args).items()
        if v is not None and k not in ("runs", "one")
    ]
    results = [rs[0] for rs in run_alternating(__file__, args.runs.split(","), options).values()]
    emit({"benchmark": "sst2_finetune", "dev": "GLUE SST-2 dev (872)", "runs": results, "machine": machine()})


if __name__ == "__main__":
    main()
