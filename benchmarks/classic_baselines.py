"""SST-2 baselines before BERT, next to a pretrained encoder: TF-IDF + logistic regression, Kim's CNN from random
vectors and from word2vec trained on SST-2 + WikiText-2 text, a BiLSTM and MiniLM; and word2vec on WikiText-2 alone
(accuracy on lmforge's shipped analogy set, nearest neighbours).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/classic_baselines.py [--train-size 8000] [--epochs 3]
        [--rows tfidf,cnn-rand,cnn-w2v,bilstm,minilm] [--minilm-minutes 10] [--w2v-dim 300] [--w2v-epochs 5]
        [--vectors sst2-wt2.vec] [--skip-wikitext] [--out /tmp/lmforge-classic]

Every row trains on the same subset of sst2/train.tsv (the first --train-size phrases after a seeded shuffle;
all 60,614 with --train-size 0) and is scored on the official GLUE dev set (sst2/glue_dev.tsv, 872 sentences).
Prints one JSON object: per row dev accuracy / macro-F1 and training seconds; the word2vec figures.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import time
from pathlib import Path

from common import emit, import_minilm, machine, shared

NEIGHBOUR_WORDS = ["king", "france", "film", "good", "music", "war"]


def subset(train: Path, size: int, seed: int, out: Path) -> Path:
    with open(train, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, rows = rows[0], rows[1:]
    random.Random(seed).shuffle(rows)
    rows = rows[:size] if size else rows
    path = out / f"train-{len(rows)}.tsv"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n")
        writer.writerows([header, *rows])
    return path


def word2vec(out: Path, inputs: list[str], args, name: str) -> tuple[Path, dict]:
    from lmforge.data.vectors import VectorOptions, train_vectors

    options = VectorOptions(dim=args.w2v_dim, epochs=args.w2v_epochs, text_field="sentence", seed=args.seed)
    path = out / f"{name}.vec"
    return path, train_vectors(inputs, path, options, overwrite=True)


def run_row(row: str, train: Path, out: Path, vectors: Path | None, args) -> dict:
    import lmforge
    from lmforge.tasks.classify.classic import ClassicOptions
    from lmforge.tasks.classify.examples import Fields

    model = {
        "tfidf": "tfidf",
        "cnn-rand": "cnn",
        "cnn-w2v": "cnn",
        "cnn-w2v-static": "cnn",
        "bilstm": "lstm",
    }.get(row, "minilm")
    run_dir = out / row
    shutil.rmtree(run_dir, ignore_errors=True)
    if model == "minilm":
        model = str(import_minilm(out / "minilm-ckpt"))
    classic = ClassicOptions(
        vectors=str(vectors) if row.startswith("cnn-w2v") else None, freeze_vectors=row == "cnn-w2v-static"
    )
    start = time.perf_counter()
    result = lmforge.finetune(
        "classify",
        model,
        train,
        run_dir,
        dev=shared("sst2/glue_dev.tsv"),
        fields=Fields(text="sentence", label="label"),
        epochs=1 if row == "minilm" else args.epochs,
        max_length=64,
        batch_size=50 if row.startswith("cnn") else 32,  # Kim's mini-batch of 50
        max_minutes=args.minilm_minutes if row == "minilm" else None,
        seed=args.seed,
        progress=False,
        classic=classic,
    )
    wall = time.perf_counter() - start
    shutil.rmtree(out / "minilm-ckpt", ignore_errors=True)
    return {
        "row": row,
        "steps": result.step,
        "stop_reason": result.stop_reason,
        "train_seconds": round(result.seconds, 1),
        "wall_seconds": round(wall, 1),
        "dev_accuracy": round(result.metrics["val_accuracy"], 4),
        "dev_macro_f1": round(result.metrics["val_macro_f1"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train-size", type=int, default=8000, help="phrases of sst2/train.tsv (0: all)")
    parser.add_argument(
        "--epochs", type=float, default=3, help="epochs of the CNN and BiLSTM rows (MiniLM: 1)"
    )
    parser.add_argument("--rows", default="tfidf,cnn-rand,cnn-w2v,bilstm,minilm")
    parser.add_argument("--minilm-minutes", type=float, default=10, help="cap on MiniLM's training time")
    parser.add_argument("--w2v-dim", type=int, default=300)
    parser.add_argument("--w2v-epochs", type=int, default=5)
    parser.add_argument("--skip-wikitext", action="store_true", help="skip the WikiText-2 word2vec figures")
    parser.add_argument(
        "--vectors", help="reuse this SST-2 + WikiText-2 vectors file instead of training one"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/lmforge-classic")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    from lmforge.data.vectors import evaluate_analogies, load_vectors, nearest

    torch.set_num_threads(1)
    rows = [r for r in args.rows.split(",") if r]
    train = subset(shared("sst2/train.tsv"), args.train_size, args.seed, out)
    result: dict = {"machine": machine(), "train_file": str(train), "rows": []}
    wikitext = str(shared("wikitext-2/train.txt"))
    vectors = Path(args.vectors) if args.vectors else None
    if vectors is None and any(r.startswith("cnn-w2v") for r in rows):
        vectors, summary = word2vec(out, [str(shared("sst2/train.tsv")), wikitext], args, "sst2-wt2")
        result["w2v_sst2_wikitext"] = summary
    for row in rows:
        result["rows"].append(run_row(row, train, out, vectors, args))
        print(result["rows"][-1], flush=True)
    if not args.skip_wikitext:
        path, summary = word2vec(out, [wikitext], args, "wt2")
        kv = load_vectors(path)
        result["w2v_wikitext"] = {
            **summary,
            "analogy_en": evaluate_analogies(kv, "en"),
            "neighbours": {w: [(n, round(s, 3)) for n, s in nearest(kv, w, 8)] for w in NEIGHBOUR_WORDS},
        }
    emit(result)


if __name__ == "__main__":
    main()
