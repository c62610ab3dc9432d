"""TPE against random search with `lmforge tune finetune`: a BiLSTM classifier from scratch on an SST-2 subset.

    .venv/bin/python benchmarks/tune_sst2.py            # 10 trials per sampler, seed 0: 16 min on 2 busy cores
    .venv/bin/python benchmarks/tune_sst2.py --seeds 0 1     # both seeds of benchmarks/RESULTS.md, twice that
    .venv/bin/python benchmarks/tune_sst2.py --trials 2 --max-examples 300 --out /tmp/t   # a 1-minute smoke run

Each trial fine-tunes `--model lstm` (word BiLSTM, trained from scratch) on the first --max-examples phrases of
sst2/train.tsv with the sampled lr (log 1e-4..3e-2), model.dropout (0..0.6) and epochs (1..4), and is scored
on sst2/dev.tsv (6,735 phrases of the GLUE train set that the ALPS re-split holds out of train.tsv): the
objective is the dev accuracy at the best per-epoch evaluation. No pruning, so both samplers give every trial the
same budget. The official GLUE dev set (sst2/glue_dev.tsv, 872 sentences) is never seen by the search: each
study's best checkpoint (study/best) is scored on it once at the end.

Prints JSON: per sampler and seed, the best dev accuracy after each trial (best-so-far), the best params, the
GLUE-dev accuracy of the best checkpoint and the wall time; writes best_so_far.png (best-so-far against trials)
in --out.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import emit, machine, shared
from tune_recipe import compare_samplers, plot_best_so_far

SPACE = {
    "lr": {"low": 1e-4, "high": 3e-2, "log": True},
    "model.dropout": {"low": 0.0, "high": 0.6},
    "epochs": {"low": 1, "high": 4},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10, help="trials per sampler and seed")
    ap.add_argument("--max-examples", type=int, default=4000, help="training phrases (the file's first N)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="sampler seeds")
    ap.add_argument("--samplers", nargs="+", default=["tpe", "random"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each trial (train.threads)")
    ap.add_argument("--out", default="/tmp/lmforge-tune-sst2")
    args = ap.parse_args()

    from lmforge.tasks.classify.examples import Fields
    from lmforge.tasks.classify.pipeline import evaluate_classifier

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    finetune_args = {
        "task": "classify",
        "model": "lstm",
        "train": str(shared("sst2/train.tsv")),
        "dev": str(shared("sst2/dev.tsv")),
        "fields": Fields(text="sentence", label="label"),
        "max_examples": args.max_examples,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "overrides": {"train.threads": args.threads},
    }
    glue_dev = shared("sst2/glue_dev.tsv")

    def held_out(study: Path, result: dict) -> dict:  # the best checkpoint on data the search never saw
        scores = evaluate_classifier(study / "best", glue_dev, device="cpu")
        return {"glue_dev_accuracy_of_best": round(scores["accuracy"], 4)}

    runs = compare_samplers(
        args, out, "finetune", SPACE, extra=held_out, metric="accuracy", finetune_args=finetune_args
    )
    plot = plot_best_so_far(
        runs, out / "best_so_far.png", "best dev accuracy so far", "TPE vs random, SST-2 BiLSTM from scratch"
    )
    emit(
        {
            "benchmark": "tune_sst2",
            "trials": args.trials,
            "max_examples": args.max_examples,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "space": SPACE,
            "runs": runs,
            "wall_s_total": round(sum(r["wall_s"] for r in runs), 1),
            "plot": str(plot) if plot else None,
            **machine(),
        }
    )


if __name__ == "__main__":
    main()
