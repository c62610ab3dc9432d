"""Loss parity of bf16 autocast training: nanoGPT's CPU recipe (and `--fast`) in fp32 and in bf16, several seeds.

    .venv/bin/python benchmarks/bf16_parity.py [--seeds 1337 1 2] [--fast] [--threads 2]

Runs benchmarks/recipe_shakespeare.py once per (seed, precision), one run at a time, and prints JSON: each run's
final validation loss (the whole validation split, scored in fp32), the mean and standard deviation per precision,
and the bf16 - fp32 difference of the means against the seed-to-seed noise. bf16 needs a CPU with bf16 instructions
(AMX-BF16 or AVX512-BF16) or a GPU; elsewhere the trainer falls back to fp32 with a warning and the rows say so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from common import emit, machine

HERE = Path(__file__).resolve().parent


def run(seed: int, precision: str, fast: bool, threads: int | None, out: str) -> dict:
    cmd = [sys.executable, str(HERE / "recipe_shakespeare.py"), "--seed", str(seed), "--precision", precision]
    cmd += ["--out", f"{out}-{precision}-{seed}"]
    if fast:
        cmd.append("--fast")
    if threads:
        cmd += ["--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout[done.stdout.index("{") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    ap.add_argument(
        "--fast", action="store_true", help="configs/shakespeare-char-fast.yaml instead of the recipe"
    )
    ap.add_argument("--threads", type=int, default=None, help="train.threads (default: torch's choice)")
    ap.add_argument("--out", default="/tmp/lmforge-bf16-parity")
    args = ap.parse_args()

    rows = [
        run(seed, precision, args.fast, args.threads, args.out)
        for seed in args.seeds
        for precision in ("fp32", "bf16")  # alternating, so a slow spell of the machine hits both
    ]
    summary = {}
    for precision in ("fp32", "bf16"):
        losses = [r["final_val_loss"] for r in rows if r["precision"] == precision]
        summary[precision] = {
            "final_val_loss": losses,
            "mean": round(statistics.mean(losses), 4),
            "sd": round(statistics.stdev(losses), 4) if len(losses) > 1 else None,
            "train_seconds": [r["train_seconds"] for r in rows if r["precision"] == precision],
        }
    diff = summary["bf16"]["mean"] - summary["fp32"]["mean"]
    noise = summary["fp32"]["sd"]
    emit(
        {
            "benchmark": "bf16_parity" + (" --fast" if args.fast else ""),
            "seeds": args.seeds,
            "summary": summary,
            "bf16_minus_fp32": round(diff, 4),
            "within_seed_noise": None if noise is None else abs(diff) <= noise,
            "runs": [
                {k: r[k] for k in ("seed", "precision", "final_val_loss", "train_seconds")} for r in rows
            ],
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
