"""Extractive QA: the real MiniLM encoder fine-tuned on part of SQuAD v1.1 (or CMRC 2018), scored on the rest.

    .venv/bin/python benchmarks/squad_qa.py [--data squad|cmrc] [--train-articles 18] [--epochs 1]
        [--max-length 256] [--doc-stride 128] [--max-minutes 60] [--model minilm|CKPT] [--out /tmp/lmforge-squad]

../shared/data/squad holds the first 24 articles of the official dev set: the first --train-articles train, the
rest are held out (split by article, so no paragraph is in both). CMRC 2018's trial set is split the same way.
Prints JSON: exact match and F1 (official SQuAD v1.1 normalisation; characters for Chinese), training time,
questions/s and peak memory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from common import emit, import_minilm, machine, peak_rss_mb, shared

FILES = {"squad": "squad/dev-v1.1.articles-00-23.json", "cmrc": "cmrc2018/cmrc2018_trial.json"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=list(FILES), default="squad")
    ap.add_argument("--train-articles", type=int, help="articles used for training (default: three quarters)")
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--doc-stride", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-examples", type=int, help="train on at most this many questions")
    ap.add_argument("--max-minutes", type=float, help="cap on the training time")
    ap.add_argument(
        "--model",
        default="minilm",
        help="minilm (the real MiniLM-L6, imported) or an lmforge encoder checkpoint (benchmarks/cmrc_qa.py)",
    )
    ap.add_argument("--out", default="/tmp/lmforge-squad")
    args = ap.parse_args()

    from lmforge.tasks.finetune import finetune
    from lmforge.tasks.qa.pipeline import evaluate_qa

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    data = json.loads(shared(FILES[args.data]).read_text(encoding="utf-8"))
    n_train = args.train_articles or (3 * len(data["data"])) // 4
    for name, part in (("train", data["data"][:n_train]), ("dev", data["data"][n_train:])):
        (out / f"{name}.json").write_text(
            json.dumps({"version": data.get("version"), "data": part}), encoding="utf-8"
        )
    model = import_minilm(out / "minilm") if args.model == "minilm" else Path(args.model)
    start = time.perf_counter()
    result = finetune(
        "qa",
        model,
        out / "train.json",
        out / "run",
        epochs=args.epochs,
        max_examples=args.max_examples,
        max_length=args.max_length,
        doc_stride=args.doc_stride,
        batch_size=args.batch_size,
        lr=args.lr,
        max_minutes=args.max_minutes,
        progress=False,
    )
    train_wall = time.perf_counter() - start
    t0 = time.perf_counter()
    scores = evaluate_qa(out / "run", out / "dev.json")
    eval_seconds = time.perf_counter() - t0
    emit(
        {
            "benchmark": f"{args.data} extractive QA ({'MiniLM-L6-H384, uncased' if args.model == 'minilm' else args.model})",
            "train_articles": n_train,
            "dev_articles": len(data["data"]) - n_train,
            "steps": result.step,
            "stop_reason": result.stop_reason,
            "train_seconds": round(result.seconds, 1),
            "train_wall_seconds": round(train_wall, 1),
            "train_windows_per_s": round(result.step * args.batch_size / max(result.seconds, 1e-9), 2),
            "dev_questions": scores["examples"],
            "exact_match": round(scores["exact_match"], 2),
            "f1": round(scores["f1"], 2),
            "eval_seconds": round(eval_seconds, 1),
            "peak_rss_mb": round(peak_rss_mb()),
            "settings": vars(args),
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
