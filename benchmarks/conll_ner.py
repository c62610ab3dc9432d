"""CoNLL-2003 English NER: the real MiniLM encoder fine-tuned as a tagger, next to a BiLSTM tagger from scratch.

    .venv/bin/python benchmarks/conll_ner.py [--max-examples 3000] [--epochs 1] [--max-length 128]
        [--runs minilm,lstm] [--max-minutes 15] [--max-dev N] [--out /tmp/lmforge-conll]

Trains on the first N sentences of conll2003/train.txt (eng.train) and scores the validation file
(conll2003/valid.txt, eng.testa, 3,250 sentences; --max-dev scores only its first N for a smoke run) with
entity-level F1 (seqeval, strict IOB2). Prints JSON: dev entity F1/precision/recall and per type, training time,
sentences/s and the peak memory of each run (each in its own process, so the peaks do not mix).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import emit, import_minilm, machine, peak_rss_mb, shared


def dev_file(args, out: Path) -> Path:
    """The validation file, or (--max-dev) a copy of its first N sentences."""
    full = shared("conll2003/valid.txt")
    if not args.max_dev:
        return full
    from lmforge.tasks.ner.conll import read_conll

    sentences = read_conll(full, max_sentences=args.max_dev)
    path = out / "dev.txt"
    path.write_text(
        "".join("".join(f"{w} {t}\n" for w, t in zip(s.words, s.tags)) + "\n" for s in sentences),
        encoding="utf-8",
    )
    return path


def one_run(args) -> dict:

    import lmforge

    out = Path(args.out) / args.one
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model = "lstm"
    if args.one == "minilm":
        model = str(import_minilm(out / "minilm"))
    start = time.perf_counter()
    result = lmforge.finetune(
        "ner",
        model,
        shared("conll2003/train.txt"),
        out / "run",
        dev=dev_file(args, out),
        epochs=args.epochs,
        max_examples=args.max_examples,
        max_length=args.max_length,
        batch_size=args.batch_size,
        lr=args.lr if args.one == "minilm" else None,
        max_minutes=args.max_minutes,
        seed=args.seed,
        overrides={"train.eval_every": 10**9},
        progress=False,  # one evaluation, at the end
    )
    wall = time.perf_counter() - start
    m = result.metrics
    seen = min(result.step * args.batch_size, args.epochs * args.max_examples)
    return {
        "run": args.one,
        "train_sentences": args.max_examples,
        "steps": result.step,
        "stop_reason": result.stop_reason,
        "train_seconds": round(result.seconds, 1),
        "wall_seconds": round(wall, 1),  # with the import, the tokenization and the dev evaluation
        "sentences_per_s": round(seen / max(result.seconds, 1e-9), 1),
        "dev_f1": round(m["val_f1"], 4),
        "dev_precision": round(m["val_precision"], 4),
        "dev_recall": round(m["val_recall"], 4),
        "dev_sentences": m["val_sentences"],
        "peak_rss_mb": round(peak_rss_mb()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="minilm,lstm")
    ap.add_argument("--max-examples", type=int, default=3000, help="training sentences")
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--lr", type=float, default=1e-4, help="MiniLM's peak learning rate (the BiLSTM uses 1e-3)"
    )
    ap.add_argument("--max-minutes", type=float, help="cap on each run's training time")
    ap.add_argument("--max-dev", type=int, help="score only the first N validation sentences")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/lmforge-conll")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration in this process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_run(args)))
        return
    results = []
    for run in args.runs.split(","):
        options = [
            f"--{k.replace('_', '-')}={v}"
            for k, v in vars(args).items()
            if v is not None and k not in ("runs", "one")
        ]
        proc = subprocess.run(
            [sys.executable, __file__, "--one", run, *options], capture_output=True, text=True
        )
        if proc.returncode:
            sys.exit(f"error: run {run} failed:\n{proc.stderr[-2000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    emit({"benchmark": "conll_ner", "dev": "CoNLL-2003 eng.testa", "runs": results, "machine": machine()})


if __name__ == "__main__":
    main()
