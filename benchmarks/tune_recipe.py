"""TPE against random search with `lmforge tune` on nanoGPT's character recipe (tiny Shakespeare, 4x128, block 64).

    .venv/bin/python benchmarks/tune_recipe.py                       # the issue's version: 2 x 20 trials x 2 seeds
    .venv/bin/python benchmarks/tune_recipe.py --trials 8 --steps 150 --seeds 0   # a ~10-minute CPU version

Each trial trains configs/shakespeare-char.yaml for a fixed budget of --steps steps with the sampled optim.lr
(log 1e-4..3e-2), optim.beta2 (0.9..0.999), optim.warmup_steps (0..--steps/2) and optim.weight_decay (0..0.3);
no pruning, so both samplers get the same budget per trial. The objective is the validation loss (on
--eval-tokens characters of the validation split, the last 10% of the text) at the best evaluation.

Prints JSON: per sampler and seed, the best validation loss after each trial (best-so-far), the best params and
the wall time; writes best_so_far.png (best-so-far against trials) in --out.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from common import REPO, emit, machine, shared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20, help="trials per sampler and seed")
    ap.add_argument("--steps", type=int, default=400, help="optimizer steps of each trial")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="sampler seeds")
    ap.add_argument("--samplers", nargs="+", default=["tpe", "random"])
    ap.add_argument(
        "--eval-tokens", type=int, default=16384, help="validation characters scored per evaluation"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each trial (train.threads)")
    ap.add_argument("--out", default="/tmp/lmforge-tune-recipe")
    args = ap.parse_args()

    import lmforge

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    data = out / "data"
    lmforge.prepare(
        [str(shared("tinyshakespeare/input.txt"))],
        str(data),
        tokenizer="char",
        split="tail",
        val_fraction=0.1,
        progress=False,
    )
    space = {
        "optim.lr": {"low": 1e-4, "high": 3e-2, "log": True},
        "optim.beta2": {"low": 0.9, "high": 0.999},
        "optim.warmup_steps": {"low": 0, "high": args.steps // 2},
        "optim.weight_decay": {"low": 0.0, "high": 0.3},
    }
    overrides = {
        "train.tensorboard": False,
        "train.eval_every": max(1, args.steps // 4),
        "train.eval_tokens": args.eval_tokens,
        "train.log_every": 50,
        "train.threads": args.threads,
    }
    runs = compare_samplers(
        args,
        out,
        "pretrain",
        space,
        pretrain_args={
            "data": str(data),
            "config": str(REPO / "configs" / "shakespeare-char.yaml"),
            "max_steps": args.steps,
            "overrides": overrides,
        },
    )
    plot = plot_best_so_far(
        runs, out / "best_so_far.png", "best validation loss so far", "TPE vs random, tiny Shakespeare (char)"
    )
    emit(
        {
            "benchmark": "tune_recipe",
            "trials": args.trials,
            "steps_per_trial": args.steps,
            "eval_tokens": args.eval_tokens,
            "threads": args.threads,
            "space": space,
            "runs": runs,
            "plot": str(plot) if plot else None,
            **machine(),
        }
    )


def compare_samplers(args, out: Path, command: str, space: dict, extra=None, **tune_args) -> list[dict]:
    """One study in out/SAMPLER-seedN per --seeds and --samplers, --trials trials each, no pruning (every trial
    gets the same budget); per study its best-so-far curve, best value and params, minutes per trial and wall time,
    and the fields `extra(study folder, result)` adds (not counted in the wall time)."""
    from lmforge.tune import tune

    runs = []
    for seed in args.seeds:
        for sampler in args.samplers:
            start = time.perf_counter()
            study = out / f"{sampler}-seed{seed}"
            result = tune(command, out=study, space=space, n_trials=args.trials, sampler=sampler, pruner="none",
                          seed=seed, progress=False, **tune_args)  # fmt: skip
            run = {
                "sampler": sampler,
                "seed": seed,
                "best_so_far": best_so_far(result),
                "best_value": round(result["best_value"], 4),
                "best_params": result["best_params"],
                "trial_minutes": [t["minutes"] for t in sorted(result["trials"], key=lambda t: t["number"])],
                "wall_s": round(time.perf_counter() - start, 1),
            }
            runs.append({**run, **(extra(study, result) if extra else {})})
    return runs


def best_so_far(result: dict) -> list[float]:
    """The study's best value after each trial, in trial order (a trial without a value, e.g. diverged, counts
    as the worst)."""
    minimize = result["direction"] == "minimize"
    trials = sorted(result["trials"], key=lambda t: t["number"])
    worst = float("inf") if minimize else float("-inf")
    values = [worst if t["value"] is None else t["value"] for t in trials]
    pick = min if minimize else max
    return [round(pick(values[: i + 1]), 4) for i in range(len(values))]


def plot_best_so_far(runs: list[dict], path: Path, ylabel: str, title: str) -> Path | None:
    """best_so_far.png: one line per sampler and seed (TPE solid, others dashed); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        style = "-" if run["sampler"] == "tpe" else "--"
        xs = range(1, len(run["best_so_far"]) + 1)
        ax.plot(xs, run["best_so_far"], style, marker="o", label=f"{run['sampler']} seed {run['seed']}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trials")
    ax.set_ylabel(ylabel)
    ax.set_title(f"lmforge tune: {title}")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
