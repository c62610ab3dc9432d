"""DialogSum dialogue summarization with a small encoder-decoder trained from scratch on this machine (issue 5).

    .venv/bin/python benchmarks/dialogsum.py [--max-minutes 30] [--epochs 3] [--block-size 384] [--threads N]
        [--out /tmp/lmforge-dialogsum]

`lmforge finetune --task summarize --model seq2seq-small` on the train CSV (12,460 dialogues; 300 seeded ones held
out as the dev set that picks the best checkpoint), the context raised to --block-size tokens so that most
dialogues fit, then `lmforge evaluate --num-beams 4` on the official dev JSONL (500 dialogues, never seen in training
or checkpoint selection): ROUGE-1/2/L F1 (rouge-score, no stemming). Prints JSON.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from pathlib import Path

from common import emit, finetune_and_score, machine, shared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-minutes", type=float, default=30.0)
    ap.add_argument("--epochs", type=float, default=3, help="the learning-rate schedule's length")
    ap.add_argument(
        "--block-size", type=int, default=384, help="tokens of dialogue (and of summary) the model sees"
    )
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", default="/tmp/lmforge-dialogsum")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with open(shared("dialogsum/dialogsum_train.csv"), encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    random.Random(args.seed).shuffle(rows)
    for name, part in (("dev", rows[:300]), ("train", rows[300:])):
        with open(out / f"{name}.csv", "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["id", "dialogue", "summary"], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(part)
    fields = ["--source-field", "dialogue", "--target-field", "summary"]
    scores = finetune_and_score(
        "summarize",
        "seq2seq-small",
        [str(out / "train.csv")],
        [str(out / "dev.csv")],
        [str(shared("dialogsum/dialogsum.dev.jsonl"))],
        fields,
        out / "run",
        args.epochs,
        args.max_minutes,
        extra=["--model.block_size", str(args.block_size)],
        threads=args.threads,
    )
    emit(
        {
            "benchmark": "dialogsum",
            **scores,
            "dialogues": {"train": len(rows) - 300, "dev": 300, "official_dev": scores["pairs"]},
            "max_minutes": args.max_minutes,
            "epochs": args.epochs,
            "block_size": args.block_size,
            "threads": args.threads,
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
