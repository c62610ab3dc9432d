"""Tatoeba Chinese -> English translation with a small encoder-decoder trained from scratch on this machine (issue 5).

    .venv/bin/python benchmarks/tatoeba_zh_en.py [--max-minutes 20] [--epochs 30] [--out /tmp/lmforge-tatoeba]

The file has no splits: a seeded shuffle holds out 1,000 pairs for test and 500 for dev, the rest (~24.9k) train.
`lmforge finetune --task translate --model seq2seq-small` (3+3 layers x 256, a byte-level BPE tokenizer trained on
the pairs, best checkpoint by dev BLEU) within the time budget, then `lmforge evaluate --num-beams 4` on the test
pairs: corpus BLEU and chrF (sacrebleu, English target). Prints JSON.
"""

from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path

from common import emit, finetune_and_score, machine, shared


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("source\ttarget\n")
        for zh, en in pairs:
            fh.write(f"{zh}\t{en}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-minutes", type=float, default=20.0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--out", default="/tmp/lmforge-tatoeba")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pairs = []
    for line in shared("tatoeba-cmn-eng/cmn.txt").read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if len(cols) >= 2 and cols[0].strip() and cols[1].strip():
            pairs.append((cols[1].strip(), cols[0].strip()))
    random.Random(args.seed).shuffle(pairs)
    test, dev, train = pairs[:1000], pairs[1000:1500], pairs[1500:]
    for name, rows in (("train", train), ("dev", dev), ("test", test)):
        write_pairs(out / f"{name}.tsv", rows)
    fields = ["--source-field", "source", "--target-field", "target"]
    scores = finetune_and_score(
        "translate",
        "seq2seq-small",
        [str(out / "train.tsv")],
        [str(out / "dev.tsv")],
        [str(out / "test.tsv")],
        fields,
        out / "run",
        args.epochs,
        args.max_minutes,
    )
    emit(
        {
            "benchmark": "tatoeba zh->en",
            **scores,
            "pairs": {"train": len(train), "dev": len(dev), "test": len(test)},
            "max_minutes": args.max_minutes,
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
