"""Low-resource SST-2: from-scratch classifiers trained on 500 and 2,000 sentences, with and without augmentation
of the training split (`finetune --augment`), three seeds each, mean ± sd of the GLUE dev accuracy.

    .venv/bin/python benchmarks/low_resource_augment.py [--sizes 500,2000] [--seeds 0,1,2] [--models lstm,cnn]
        [--methods none,eda] [--epochs 10] [--vectors vec.txt] [--mlm CKPT] [--out /tmp/lmforge-augment]

Each seed draws its own training sample (sst2/train.tsv, the GLUE train set; only its sentence-like items of 10
words or more, --min-words: the rest are short phrases of the parse trees) and trains every arm on it; the dev
set is the official GLUE dev (sst2/glue_dev.tsv, 872 sentences), never augmented. Arms of one size train for the
same number of steps (--epochs passes over the un-augmented sample), so augmentation replaces repeats of the same
sentences by variants at equal compute; the checkpoint kept is the best of the per-epoch evaluations by dev
macro-F1 (lmforge's RUN/best, the same rule for every arm), and the last evaluation is reported too.

EDA follows Wei & Zou (2019)'s recommended settings: alpha 0.05 and 16 new sentences per sentence at 500, 8 at
2,000. Its synonyms are nearest neighbours in word2vec vectors trained here on the SST-2 train text plus
WikiText-2 (`lmforge vectors train`, 100 dimensions) unless --vectors is given. `contextual` needs a masked LM
with its MLM head (--mlm; the packaged MiniLM ships none, so it is not run by default). `--model cnn` runs only
where the CNN classifier exists (issue 18); the default takes it when it does. Results go to OUT/results.jsonl
(a rerun skips the runs already there) and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, machine, shared

EDA_SETTINGS = {500: (16, 0.05), 2000: (8, 0.05)}  # Wei & Zou's n_aug and alpha by training-set size


def sample(size: int, seed: int, folder: Path, min_words: int) -> Path:
    """`size` items of sst2/train.tsv with at least `min_words` words, drawn by `seed` (written once)."""
    path = folder / f"train-{size}-min{min_words}-seed{seed}.tsv"
    if not path.exists():
        lines = shared("sst2/train.tsv").read_text(encoding="utf-8").splitlines()
        header = lines[0]
        rows = [ln for ln in lines[1:] if len(ln.split("\t")[0].split()) >= min_words]
        chosen = random.Random(seed).sample(rows, size)
        path.write_text("\n".join([header, *chosen]) + "\n", encoding="utf-8")
    return path


def train_vectors(folder: Path) -> Path:
    """word2vec on the SST-2 train sentences plus WikiText-2 train, for EDA's synonyms."""
    out = folder / "sst2-wikitext2.vec.txt"
    if not out.exists():
        corpus = folder / "sst2-sentences.txt"
        rows = shared("sst2/train.tsv").read_text(encoding="utf-8").splitlines()[1:]
        corpus.write_text("\n".join(r.split("\t")[0] for r in rows) + "\n", encoding="utf-8")
        cmd = [
            sys.executable,
            "-m",
            "lmforge",
            "vectors",
            "train",
            str(corpus),
            str(shared("wikitext-2/train.txt")),
        ]
        cmd += ["--out", str(out), "--dim", "100", "--min-count", "3", "--epochs", "5"]
        subprocess.run(cmd, check=True, cwd=REPO)
    return out


def best_and_last(run_dir: Path) -> tuple[float, float]:
    """Dev accuracy of the evaluation with the best dev macro-F1 (RUN/best) and of the last evaluation."""
    evals = [
        json.loads(ln)
        for ln in (run_dir / "metrics.jsonl").read_text().splitlines()
        if ln.strip() and "val_accuracy" in ln
    ]
    evals = [e for e in evals if "val_accuracy" in e]
    best = max(evals, key=lambda e: e["val_macro_f1"])  # first of ties, as the trainer keeps it
    return best["val_accuracy"], evals[-1]["val_accuracy"]


def one_run(model: str, size: int, seed: int, method: str, args, folder: Path, vectors: Path | None) -> dict:
    import shutil

    import lmforge
    from lmforge.tasks.classify.examples import Fields

    run_dir = folder / f"{model}-{size}-{method}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    steps_per_epoch = math.ceil(size / args.batch_size)
    augment = {}
    if method == "eda":
        n, alpha = EDA_SETTINGS.get(size, (4, 0.1))
        augment = dict(augment="eda", augment_n=n, augment_alpha=alpha, augment_model=str(vectors))
    elif method == "contextual":
        augment = dict(augment="contextual", augment_n=4, augment_alpha=0.15, augment_model=args.mlm)
    start = time.perf_counter()
    result = lmforge.finetune(
        "classify",
        model,
        sample(size, seed, folder, args.min_words),
        run_dir,
        dev=shared("sst2/glue_dev.tsv"),
        fields=Fields(text="sentence", label="label"),
        batch_size=args.batch_size,
        seed=seed,
        # Equal compute for every arm of a size: --epochs passes over the un-augmented sample, one evaluation each.
        overrides={"train.max_steps": args.epochs * steps_per_epoch, "train.eval_every": steps_per_epoch},
        progress=False,
        **augment,
    )
    best, last = best_and_last(run_dir)
    card = (
        (result.best / "README.md").read_text(encoding="utf-8")
        if (result.best / "README.md").exists()
        else ""
    )
    trained_on = next((ln for ln in card.splitlines() if "training file" in ln), "")
    return {
        "model": model,
        "size": size,
        "seed": seed,
        "method": method,
        "min_words": args.min_words,
        "steps": result.step,
        "dev_accuracy_best": round(best, 4),
        "dev_accuracy_last": round(last, 4),
        "seconds": round(time.perf_counter() - start, 1),
        "card": trained_on.strip(),
    }


def sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def table(rows: list[dict]) -> str:
    out = [
        "| model | training sentences | augmentation | dev accuracy, best epoch (mean ± sd) | last epoch | seeds |",
        "|---|---|---|---|---|---|",
    ]
    keys = sorted(
        {(r["model"], r["size"], r["method"]) for r in rows}, key=lambda k: (k[0], k[1], k[2] != "none")
    )
    for model, size, method in keys:
        group = [r for r in rows if (r["model"], r["size"], r["method"]) == (model, size, method)]
        best = [100 * r["dev_accuracy_best"] for r in group]
        last = [100 * r["dev_accuracy_last"] for r in group]
        n, alpha = EDA_SETTINGS.get(size, (4, 0.1))
        name = f"eda (n {n}, alpha {alpha})" if method == "eda" else method
        out.append(
            f"| {model} | {size:,} | {name} | {statistics.fmean(best):.1f} ± {sd(best):.1f} | "
            f"{statistics.fmean(last):.1f} ± {sd(last):.1f} | {len(group)} |"
        )
    return "\n".join(out)


def main() -> None:
    from lmforge.models.classifier import BACKBONES

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="500,2000")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--models", default="lstm,cnn" if "cnn" in BACKBONES else "lstm")
    parser.add_argument(
        "--min-words",
        type=int,
        default=10,
        help="sample training items of at least this many words (GLUE's SST-2 train holds every phrase of the "
        "parse trees; the dev set is whole sentences, 19.5 words on average)",
    )
    parser.add_argument("--methods", default="none,eda", help="none, eda, contextual (needs --mlm)")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the un-augmented sample")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--vectors", help="word vectors for EDA (default: trained here on SST-2 + WikiText-2)"
    )
    parser.add_argument("--mlm", help="a masked-LM checkpoint for contextual augmentation")
    parser.add_argument("--out", default="/tmp/lmforge-augment")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fair on a shared machine)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    methods = args.methods.split(",")
    if "contextual" in methods and not args.mlm:
        sys.exit("error: --methods contextual needs --mlm CKPT (a bert checkpoint with its masked-LM head)")
    vectors = Path(args.vectors) if args.vectors else (train_vectors(folder) if "eda" in methods else None)
    results_file = folder / "results.jsonl"
    done = [json.loads(ln) for ln in results_file.read_text().splitlines()] if results_file.exists() else []
    have = {(r["model"], r["size"], r["seed"], r["method"]) for r in done}
    for size in map(int, args.sizes.split(",")):
        for seed in map(int, args.seeds.split(",")):
            for model in args.models.split(","):
                for method in methods:
                    if (model, size, seed, method) in have:
                        continue
                    row = one_run(model, size, seed, method, args, folder, vectors)
                    print(json.dumps(row), flush=True)
                    with open(results_file, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(row) + "\n")
                    done.append(row)
    print(json.dumps(machine()))
    print(table([r for r in done if r["model"] in args.models.split(",") and r["method"] in methods]))


if __name__ == "__main__":
    main()
