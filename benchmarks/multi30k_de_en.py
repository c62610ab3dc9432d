"""Multi30k German -> English with a small encoder-decoder trained from scratch on this machine (issue 5).

    .venv/bin/python benchmarks/multi30k_de_en.py [--max-minutes 60] [--epochs 4] [--threads N]
        [--out /tmp/lmforge-multi30k]

`lmforge finetune --task translate --model seq2seq-small` on the parallel files train.de/train.en (read with
--source-lang de --target-lang en; 500 seeded pairs of train are held out as the dev set that picks the best
checkpoint), then `lmforge evaluate --num-beams 4` on the official validation split (1,014 pairs, never seen in
training or checkpoint selection): corpus BLEU and chrF (sacrebleu). Prints JSON.
"""

from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path

from common import emit, finetune_and_score, machine, shared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-minutes", type=float, default=60.0)
    ap.add_argument("--epochs", type=float, default=4, help="the learning-rate schedule's length")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", default="/tmp/lmforge-multi30k")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    de = shared("multi30k/train.de").read_text(encoding="utf-8").splitlines()
    en = shared("multi30k/train.en").read_text(encoding="utf-8").splitlines()
    order = list(range(len(de)))
    random.Random(args.seed).shuffle(order)
    held = set(order[:500])
    for split, keep in (("train", lambda i: i not in held), ("dev", lambda i: i in held)):
        for lang, lines in (("de", de), ("en", en)):
            (out / f"{split}.{lang}").write_text(
                "".join(lines[i] + "\n" for i in range(len(de)) if keep(i)), encoding="utf-8"
            )
    langs = ["--source-lang", "de", "--target-lang", "en"]
    val = str(shared("multi30k/val.de"))[: -len(".de")]
    scores = finetune_and_score(
        "translate",
        "seq2seq-small",
        [str(out / "train")],
        [str(out / "dev")],
        [val],
        langs,
        out / "run",
        args.epochs,
        args.max_minutes,
        threads=args.threads,
    )
    emit(
        {
            "benchmark": "multi30k de->en",
            **scores,
            "pairs": {"train": len(de) - 500, "dev": 500, "val": scores["pairs"]},
            "max_minutes": args.max_minutes,
            "epochs": args.epochs,
            "threads": args.threads,
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
