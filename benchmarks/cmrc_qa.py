"""CMRC 2018 Chinese extractive QA with an encoder whose vocabulary covers Chinese, built here from scratch (issue 4).

    .venv/bin/python benchmarks/cmrc_qa.py [--pretrain-minutes 15] [--qa-minutes 15] [--preset bert-mini]
        [--threads N] [--out /tmp/lmforge-cmrc]

The only pretrained encoder available offline (MiniLM, English uncased WordPiece) knows 187 of the 3,206 Chinese
characters of CMRC's contexts, so more than half of their tokens would be [UNK]. Instead, through the CLI:
`lmforge prepare` a Chinese corpus (the OCNLI premises and hypotheses, and the contexts of the CMRC training
articles only) with a WordPiece tokenizer (one token per Chinese character), `lmforge pretrain` a BERT-style
encoder with masked-LM for --pretrain-minutes, then benchmarks/squad_qa.py --data cmrc --model that checkpoint:
fine-tuned on the first three quarters of the trial set's articles, scored (EM / F1 by character) on the rest.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, emit, machine, shared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-minutes", type=float, default=15.0)
    ap.add_argument("--qa-minutes", type=float, default=15.0)
    ap.add_argument("--qa-epochs", type=float, default=3)
    ap.add_argument("--preset", default="bert-mini")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", default="/tmp/lmforge-cmrc")
    args = ap.parse_args()

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    cmrc = json.loads(shared("cmrc2018/cmrc2018_trial.json").read_text(encoding="utf-8"))["data"]
    n_train = (3 * len(cmrc)) // 4  # the same split squad_qa.py makes
    texts = [p["context"] for article in cmrc[:n_train] for p in article["paragraphs"]]
    for line in shared("ocnli/train.10k.json").read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        texts += [item["sentence1"], item["sentence2"]]
    corpus = out / "zh.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8"
    )
    lmforge = [sys.executable, "-m", "lmforge"]
    start = time.perf_counter()
    subprocess.run(
        [
            *lmforge,
            "prepare",
            str(corpus),
            "--out",
            str(out / "data"),
            "--tokenizer",
            "wordpiece",
            "--vocab-size",
            str(args.vocab_size),
            "--doc-split",
            "line",
        ],
        check=True,
        cwd=REPO,
        env=env,
    )
    subprocess.run(
        [
            *lmforge,
            "pretrain",
            "--data",
            str(out / "data"),
            "--out",
            str(out / "encoder"),
            "--preset",
            args.preset,
            "--max-minutes",
            str(args.pretrain_minutes),
            "--train.max_steps",
            "1000000",
        ],
        check=True,
        cwd=REPO,
        env=env,
    )
    pretrain_wall = time.perf_counter() - start
    mlm = subprocess.run(
        [*lmforge, "evaluate", str(out / "encoder"), "--data", str(out / "data"), "--json"],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    qa = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "squad_qa.py"),
            "--data",
            "cmrc",
            "--model",
            str(out / "encoder"),
            "--max-minutes",
            str(args.qa_minutes),
            "--epochs",
            str(args.qa_epochs),
            "--out",
            str(out / "qa"),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    emit(
        {
            "benchmark": "cmrc2018 trial, encoder pretrained here",
            "corpus_texts": len(texts),
            "preset": args.preset,
            "pretrain_wall_seconds": round(pretrain_wall, 1),
            "mlm_validation": json.loads(mlm.stdout),
            "qa": json.loads(qa.stdout),
            "threads": args.threads,
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
