"""Continued pretraining: a GPT pretrained on the quickstart corpus, continued on tiny Shakespeare, against the same
model trained from scratch on Shakespeare for the same minutes with the same tokenizer.

    .venv/bin/python benchmarks/continued_pretraining.py [--preset small] [--base-minutes 4] [--minutes 2.5]
    .venv/bin/python benchmarks/continued_pretraining.py --steps 200    # equal steps instead of equal minutes

1. the quickstart's corpus (Python's standard-library docs, `lmforge quickstart`'s default) is prepared with a
   4,096-token BPE tokenizer, and `--preset` is pretrained on it for `--base-minutes`;
2. tiny Shakespeare is prepared with that run's tokenizer (`prepare --tokenizer RUN`; the last 10% is validation);
3. `pretrain --init-from RUN` continues it on Shakespeare for `--minutes`, and the same preset is trained from
   scratch on the same Shakespeare data for the same `--minutes`, with the same optimizer settings.

Prints JSON: validation bits per byte on Shakespeare (and on the quickstart corpus) of the base model, the continued
one and the one from scratch (the whole validation splits). Training is capped by wall time, so on a shared CPU the
step counts move with the load; bits per byte are exact for the checkpoints that come out.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from common import emit, machine, shared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", help="model size (default: small, the quickstart's)")
    ap.add_argument("--base-minutes", type=float, default=4.0, help="pretraining on the quickstart corpus")
    ap.add_argument(
        "--minutes", type=float, default=2.5, help="each Shakespeare run: continued and from scratch"
    )
    ap.add_argument(
        "--steps", type=int, help="each Shakespeare run stops after this many steps instead of --minutes"
    )
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the Shakespeare runs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (one: the CPU is shared)")
    ap.add_argument("--out", default="/tmp/lmforge-continued")
    args = ap.parse_args()

    import torch

    import lmforge
    from lmforge.data.corpus import write_builtin_corpus
    from lmforge.data.prepare import prepare
    from lmforge.eval.perplexity import evaluate

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.perf_counter()
    common = {"train.tensorboard": False, "train.threads": args.threads, "train.eval_tokens": 32768}

    write_builtin_corpus("stdlib-docs", out / "corpus")
    prepare([str(out / "corpus")], out / "qs", tokenizer="bpe", vocab_size=4096, progress=False)
    base = lmforge.pretrain(
        out / "qs",
        out / "base",
        preset=args.preset,
        overrides={**common, "optim.warmup_steps": 50},
        max_steps=100_000,
        max_minutes=args.base_minutes,
        progress=False,
    )
    prepare(
        [str(shared("tinyshakespeare/input.txt"))],
        out / "sh",
        tokenizer=str(out / "base"),
        split="tail",
        progress=False,
    )
    shakespeare = {**common, "optim.lr": args.lr, "optim.warmup_steps": 20, "train.eval_every": 100}
    runs = {}
    for name, start in (("continued", {"init_from": out / "base"}), ("scratch", {"preset": args.preset})):
        runs[name] = lmforge.pretrain(
            out / "sh",
            out / name,
            overrides=shakespeare,
            max_steps=args.steps or 100_000,
            max_minutes=None if args.steps else args.minutes,
            progress=False,
            **start,
        )

    def bpb(run: Path, data: Path) -> float:
        return round(evaluate(run / "latest", data)["bits_per_byte"], 4)

    table = {
        "base (quickstart corpus only)": {"steps": base.step, "ckpt": out / "base"},
        "continued on Shakespeare": {"steps": runs["continued"].step, "ckpt": out / "continued"},
        "from scratch on Shakespeare": {"steps": runs["scratch"].step, "ckpt": out / "scratch"},
    }
    for row in table.values():
        ckpt = row.pop("ckpt")
        row["shakespeare_val_bpb"] = bpb(ckpt, out / "sh")
        row["quickstart_val_bpb"] = bpb(ckpt, out / "qs")
    emit(
        {
            "benchmark": "continued_pretraining",
            "preset": args.preset,
            "base_minutes": args.base_minutes,
            "minutes": None if args.steps else args.minutes,
            "steps": args.steps,
            "lr": args.lr,
            "threads": args.threads,
            "results": table,
            "seconds": round(time.perf_counter() - started, 1),
            **machine(),
        }
    )


if __name__ == "__main__":
    main()
