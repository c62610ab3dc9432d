"""Zaremba, Sutskever & Vinyals (2014) LSTMs on word-level Penn Treebank, with the configs in configs/.

    .venv/bin/python benchmarks/zaremba_ptb.py --size small [--max-minutes 40] [--threads 1] [--work /tmp/zaremba]

Prepares PTB the usual word-level way (one `</s>` per line, the train split's vocabulary, its own valid file),
trains `configs/zaremba-SIZE.yaml` (optionally cut short by a time limit: the schedule stays the full run's, so
a cut-short run is the first part of the real one) and prints JSON: tokens/s, the projected time of the whole
run, and the validation perplexity after every epoch (the config evaluates once per epoch on the whole split)
and at the end. Published validation perplexity: small 120.7, medium 86.2.

lmforge's loss is the mean over every token of the batch; Zaremba et al.'s (and the TensorFlow tutorial's) is
summed over the BPTT steps and averaged over the batch only, so their gradient is block_size times ours. Their
"SGD lr 1, clip the norm at 5" is therefore lr = block_size and clip = 5 / block_size here (the PyTorch example's
lr 20 / clip 0.25 is the same translation); the configs carry that translation.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from common import REPO, emit, machine, peak_rss_mb, shared

PUBLISHED_VALID_PPL = {"small": 120.7, "medium": 86.2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(PUBLISHED_VALID_PPL), default="small")
    ap.add_argument(
        "--max-minutes", type=float, default=None, help="stop the run after this much training time"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument(
        "--work", default="/tmp/lmforge-zaremba", help="where the data and the run go (not the repo)"
    )
    args = ap.parse_args()

    import lmforge
    from lmforge.config import build_run_config

    work = Path(args.work)
    data = work / "ptb"
    if not (data / "manifest.json").is_file():
        lmforge.prepare(
            [str(shared("ptb/ptb.train.txt"))],
            out=data,
            tokenizer="word",
            doc_split="line",
            dedup=False,
            val_inputs=[str(shared("ptb/ptb.valid.txt"))],
            progress=False,
        )
    config = REPO / "configs" / f"zaremba-{args.size}.yaml"
    cfg = build_run_config(config_file=config)
    overrides = {"train.threads": args.threads}
    run_dir = work / f"zaremba-{args.size}-{time.strftime('%Y%m%d-%H%M%S')}"
    start = time.perf_counter()
    run = lmforge.pretrain(
        data=data,
        out=run_dir,
        config=config,
        max_minutes=args.max_minutes,
        overrides=overrides,
        progress=False,
    )
    wall = time.perf_counter() - start

    tokens_per_step = cfg.train.batch_size * cfg.model.block_size
    steps_per_epoch = cfg.optim.step_every  # the configs decay once per epoch, so this is an epoch's steps
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    evals = [
        {
            "step": r["step"],
            "epochs": round(r["step"] / steps_per_epoch, 2),
            "val_perplexity": round(r["val_perplexity"], 2),
        }
        for r in records
        if "val_perplexity" in r
    ]
    emit(
        {
            "benchmark": "zaremba_ptb",
            "size": args.size,
            "machine": machine(),
            "config": str(config.relative_to(REPO)),
            "threads": args.threads,
            "lr": overrides.get("optim.lr", cfg.optim.lr),
            "grad_clip": overrides.get("optim.grad_clip", cfg.optim.grad_clip),
            "max_minutes": args.max_minutes,
            "steps": run.step,
            "of_steps": cfg.train.max_steps,
            "epochs": round(run.step / steps_per_epoch, 2),
            "of_epochs": round(cfg.train.max_steps / steps_per_epoch, 2),
            "complete": run.step >= cfg.train.max_steps,
            "train_seconds": round(run.seconds, 1),
            "wall_seconds": round(wall, 1),
            "tokens_per_s": round(run.tokens_per_s),
            "projected_full_run_hours": round(
                cfg.train.max_steps * tokens_per_step / run.tokens_per_s / 3600, 2
            ),
            "final_val_perplexity": round(math.exp(run.metrics["val_loss"]), 2),
            "published_val_perplexity": PUBLISHED_VALID_PPL[args.size],
            "evaluations": evals,
            "run_dir": str(run_dir),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
    )


if __name__ == "__main__":
    main()
