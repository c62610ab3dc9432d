"""Interpolated modified Kneser-Ney n-gram models on Penn Treebank (Mikolov's version), orders 3 and 5.

    .venv/bin/python benchmarks/ngram_ptb.py [--orders 3 5] [--arpa-dir /tmp/lmforge-ngram-ptb]

The usual word-level set-up: one sentence per line followed by an end-of-sentence token, the vocabulary of the
training split (10k words, `<unk>` included, plus the end-of-sentence token), perplexity per predicted token with
`</s>` included. Published KenLM/SRILM modified-KN 5-gram numbers on this data are about 141-148 (valid/test).
Prints JSON: training and scoring tokens/s, validation perplexity, ARPA write/read time and peak memory.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from common import emit, machine, peak_rss_mb, shared

SPECIALS = ["<s>", "</s>"]  # ids 0 and 1: sentence start (context only) and end of sentence (predicted)


def read_ids(path: Path, vocab: dict[str, int]) -> np.ndarray:
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        ids.extend(vocab[w] for w in line.split())
        ids.append(vocab["</s>"])
    return np.array(ids, dtype=np.uint16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, nargs="+", default=[3, 5])
    ap.add_argument(
        "--arpa-dir", default=None, help="also write each model as ARPA here and time the round trip"
    )
    args = ap.parse_args()

    from lmforge.models.ngram import NGramLM

    train_path, valid_path = shared("ptb/ptb.train.txt"), shared("ptb/ptb.valid.txt")
    words = sorted({w for line in train_path.read_text(encoding="utf-8").splitlines() for w in line.split()})
    names = SPECIALS + words
    vocab = {w: i for i, w in enumerate(names)}
    train, valid = read_ids(train_path, vocab), read_ids(valid_path, vocab)
    result = {
        "benchmark": "ngram_ptb",
        "machine": machine(),
        "vocab_size": len(names),
        "train_tokens": int(train.size),
        "valid_tokens": int(valid.size),
        "models": [],
    }
    for order in args.orders:
        start = time.perf_counter()
        model = NGramLM.fit(train, order, len(names), bos_id=0, eos_id=1, unk_id=vocab["<unk>"])
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        nats, count = model.score(valid)
        score_s = time.perf_counter() - start
        row = {
            "order": order,
            "ngrams": model.num_ngrams[1:],
            "discounts": np.round(model.discounts, 4).tolist(),
            "fit_seconds": round(fit_s, 2),
            "train_tokens_per_s": round(train.size / fit_s),
            "score_seconds": round(score_s, 3),
            "score_tokens_per_s": round(count / score_s),
            "valid_perplexity": round(math.exp(nats / count), 2),
        }
        if args.arpa_dir:
            path = Path(args.arpa_dir) / f"ptb.{order}gram.arpa"
            path.parent.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            model.to_arpa(path, names.__getitem__)
            row["arpa_write_seconds"] = round(time.perf_counter() - start, 2)
            start = time.perf_counter()
            back = NGramLM.from_arpa(path)
            row["arpa_read_seconds"] = round(time.perf_counter() - start, 2)
            row["arpa_valid_perplexity"] = round(math.exp(back.score(valid)[0] / count), 2)
            row["arpa_megabytes"] = round(path.stat().st_size / 1e6, 1)
        result["models"].append(row)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    emit(result)


if __name__ == "__main__":
    main()
