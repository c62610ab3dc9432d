"""Several model families trained on the same corpus with the same budget, side by side.

Each family is pretrained into OUT/runs/ARCH through `lmforge.pretrain`, then its final checkpoint is scored on
the whole validation split. The report is OUT/table.md, OUT/results.json and OUT/curves.png (validation loss
against training tokens and against training time, from each run's metrics.jsonl).

Only causal language models are compared: perplexity and bits per byte mean the same thing for an n-gram, a
recurrent LM and a GPT reading the same tokens, but not for a masked LM, which predicts from both sides.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from lmforge.config import build_run_config
from lmforge.errors import CheckpointError, ConfigError
from lmforge.extras import require
from lmforge.models.registry import ARCHITECTURES, is_statistical, model_config_class

# Defaults for a fair small comparison on a CPU: models of a few million parameters (reasonable, not tuned).
# Under a time budget the number of steps is unknown in advance, so the learning rate stays constant after
# warmup for every family alike; under a token budget each schedule spans exactly the budget.
# A recurrent LM of the GPT's size class: 2 x 256, tied embeddings, the usual BPTT length of 35.
_RECURRENT = {
    "model.n_layer": 2,
    "model.n_embd": 256,
    "model.n_hidden": 256,
    "model.block_size": 35,
    "model.dropout": 0.1,
    "model.tie_embeddings": True,
    "train.batch_size": 20,
    "train.eval_every": 50,
    "optim.lr": 3e-3,
}
ARCH_DEFAULTS: dict[str, dict] = {
    "ngram": {"preset": None, "overrides": {"model.order": 5}},
    "gpt": {
        "preset": "small",
        "overrides": {"model.dropout": 0.1, "train.batch_size": 16, "train.eval_every": 25},
    },
    "lstm": {"preset": None, "overrides": dict(_RECURRENT)},
    "gru": {"preset": None, "overrides": dict(_RECURRENT)},
    # The ungated RNN gets a lower rate: its gradients explode more easily.
    "rnn": {"preset": None, "overrides": {**_RECURRENT, "model.dropout": 0.0, "optim.lr": 1e-3}},
}
# For every trained family: the periodic evaluations draw the curves (frequent, on a sample of the split, to keep
# them cheap; the table scores the whole split), one checkpoint at the end, no TensorBoard. The eval_every values
# above put a point every 35-50k training tokens, so even a slow CPU draws a curve in a few minutes.
COMMON_OVERRIDES = {"train.eval_tokens": 16384, "train.save_every": 10**9, "train.tensorboard": False}
CURVE_POINTS = 20  # periodic evaluations per run under a token budget
CAUSAL_OBJECTIVES = ("clm", "tbptt")  # next-token prediction from the left context, in windows or as a stream


def compare(
    data: str | os.PathLike,
    archs: list[str],
    out: str | os.PathLike,
    budget_minutes: float | None = None,
    budget_tokens: int | None = None,
    overrides: dict | None = None,
    presets: dict | None = None,
    progress: bool = True,
) -> dict:
    """Train each of `archs` on `data` with one budget and report them side by side; returns the results dict.

    `overrides` holds dotted config keys for every trained family ({"train.threads": 1}) or for one family
    ({"lstm.model.n_layer": 3}); `presets` maps a family to a named preset ({"gpt": "mini"}). The n-gram is fitted
    in one counting pass over the whole training split, whatever the budget.
    """
    archs = _check_archs(archs)
    if (budget_minutes is None) == (budget_tokens is None):
        raise ConfigError("give exactly one budget: minutes of training or training tokens per family")
    if budget_minutes is not None and not budget_minutes > 0:
        raise ConfigError(f"the budget must be positive, got {budget_minutes} minutes")
    if budget_tokens is not None and budget_tokens < 1:
        raise ConfigError(f"the budget must be positive, got {budget_tokens} tokens")
    for key in [k for k in (overrides or {}) if k.split(".", 1)[0] in ARCHITECTURES] + list(presets or {}):
        if key.split(".", 1)[0] not in archs:
            raise ConfigError(
                f"{key} names a family that is not compared here; compare {key.split('.', 1)[0]} too or drop it"
            )
    out = Path(out)
    if (out / "runs").exists() or (out / "results.json").exists():
        raise CheckpointError(f"{out} already holds a comparison; choose another --out or remove it")
    require(
        "matplotlib", extra="tasks", feature="the plot of lmforge compare"
    )  # before the budget, not after it
    plans = {
        arch: _plan(arch, overrides or {}, presets or {}, budget_minutes, budget_tokens) for arch in archs
    }
    # torch, imported only when a comparison runs: `lmforge compare --help` shows ARCH_DEFAULTS from this module.
    from lmforge.tasks.lm.run import pretrain

    rows = []
    for arch, (preset, arch_overrides) in plans.items():
        if progress:
            print(f"== {arch}", file=sys.stderr, flush=True)
        run = pretrain(
            data=data,
            out=out / "runs" / arch,
            arch=arch,
            preset=preset,
            overrides=arch_overrides,
            progress=progress,
        )
        rows.append(_row(arch, preset, arch_overrides, run, data))
    results = {
        "data": str(Path(data).resolve()),
        "budget": {"minutes": budget_minutes, "tokens": budget_tokens},
        "archs": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "table.md").write_text(markdown_table(rows) + "\n", encoding="utf-8")
    plot_curves(rows, out / "curves.png")
    results["files"] = {name: str(out / name) for name in ("table.md", "results.json", "curves.png")}
    return results


def describe_defaults() -> str:
    """One line per family: its default preset and overrides (for --help)."""
    lines = []
    for arch, d in ARCH_DEFAULTS.items():
        parts = ([f"preset {d['preset']}"] if d["preset"] else []) + [
            f"{k} {v}" for k, v in d["overrides"].items()
        ]
        lines.append(f"  {arch:6s} " + ", ".join(parts))
    return "\n".join(lines)


def _check_archs(archs: list[str]) -> list[str]:
    archs = [a.strip() for a in archs if a.strip()]
    if not archs:
        raise ConfigError("name at least one architecture to compare, e.g. --archs ngram,lstm,gpt")
    if len(set(archs)) != len(archs):
        raise ConfigError(f"an architecture is named twice in {','.join(archs)}; name each once")
    for arch in archs:
        objective = getattr(model_config_class(arch), "objective", "clm")
        if objective not in CAUSAL_OBJECTIVES:
            raise ConfigError(
                f"{arch} is trained with the {objective!r} objective, so its perplexity is not comparable with a "
                f"causal LM's; compare causal families only ({', '.join(a for a in ARCH_DEFAULTS)})"
            )
    return archs


def _plan(
    arch: str, overrides: dict, presets: dict, budget_minutes, budget_tokens
) -> tuple[str | None, dict]:
    """The preset and overrides one family trains with: defaults, then the caller's, then the budget."""
    defaults = ARCH_DEFAULTS.get(arch, {"preset": None, "overrides": {}})
    preset = presets.get(arch, defaults["preset"])
    if is_statistical(arch):
        merged = dict(defaults["overrides"])
    else:
        merged = {**COMMON_OVERRIDES, **defaults["overrides"]}
        merged.update({k: v for k, v in overrides.items() if k.split(".", 1)[0] not in ARCHITECTURES})
    merged.update({k.split(".", 1)[1]: v for k, v in overrides.items() if k.split(".", 1)[0] == arch})
    if is_statistical(arch):
        return preset, merged
    if budget_tokens is not None:
        cfg = build_run_config(arch=arch, preset=preset, overrides=merged)
        tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size
        steps = math.ceil(budget_tokens / tokens_per_step)
        if not {"train.eval_every", f"{arch}.train.eval_every"} & set(overrides):
            merged["train.eval_every"] = max(1, steps // CURVE_POINTS)
        merged.update({"train.max_steps": steps, "train.max_tokens": budget_tokens})
    else:
        # The clock stops the run; the step limit must not, and a schedule tied to it would never decay anyway.
        merged.update({"train.max_minutes": budget_minutes, "train.max_steps": 10**9})
        merged.setdefault("optim.schedule", "constant")
    return preset, merged


def _row(arch: str, preset: str | None, overrides: dict, run, data) -> dict:
    from lmforge.eval.perplexity import evaluate  # torch: see compare()
    from lmforge.lm import load

    lm = load(run.run_dir)
    scores = evaluate(lm, data, split="val")
    fitted = run.stop_reason == "fitted"
    return {
        "arch": arch,
        "preset": preset,
        "overrides": overrides,
        "parameters": lm.model.num_params(),
        "train_seconds": run.seconds,
        "train_tokens": run.tokens,
        "tokens_per_s": run.tokens_per_s,
        "steps": run.step,
        "stop_reason": run.stop_reason,
        "fitted": fitted,
        "val_loss": scores["loss"],
        "val_perplexity": scores["perplexity"],
        "val_bits_per_byte": scores["bits_per_byte"],
        "val_tokens": scores["tokens"],
        "curve": _curve(run),
        "run_dir": str(run.run_dir),
    }


def _curve(run) -> list[dict]:
    """(tokens, seconds, val_loss) at each periodic evaluation of a run, from its metrics.jsonl.

    Evaluation records carry the step but not the clock; the clock is read off the training records around
    them (and the run's final time), so evaluation time is not counted as training time.
    """
    records = [
        json.loads(ln)
        for ln in (Path(run.run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        if ln.strip()
    ]
    if run.stop_reason == "fitted":
        return [
            {"tokens": run.tokens, "seconds": run.seconds, "val_loss": r["val_loss"]}
            for r in records
            if "val_loss" in r
        ]
    clock = sorted(
        {(0, 0.0), (run.step, run.seconds)}
        | {(r["step"], r["elapsed_s"]) for r in records if "elapsed_s" in r}
    )
    steps, seconds = zip(*clock)
    return [
        {
            "tokens": r["tokens"],
            "seconds": float(np.interp(r["step"], steps, seconds)),
            "val_loss": r["val_loss"],
        }
        for r in records
        if "val_loss" in r
    ]


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| model | parameters | training time | training tokens | tokens/s | val loss | val perplexity | bits per byte |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = r["arch"] + (f" ({r['preset']})" if r["preset"] else "")
        time_cell = f"{r['train_seconds']:.1f} s" + (" (fit, one pass)" if r["fitted"] else "")
        params = f"{r['parameters']:,}" + (" (n-gram weights)" if r["fitted"] else "")
        lines.append(
            f"| {name} | {params} | {time_cell} | {r['train_tokens']:,} | {r['tokens_per_s']:,.0f} | "
            f"{r['val_loss']:.4f} | {r['val_perplexity']:.2f} | {r['val_bits_per_byte']:.4f} |"
        )
    return "\n".join(lines)


def plot_curves(rows: list[dict], path: Path) -> None:
    matplotlib = require("matplotlib", extra="tasks", feature="the plot of lmforge compare")
    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, r in enumerate(rows):
        color = f"C{i}"
        pts = r["curve"]
        for ax, key in zip(axes, ("tokens", "seconds")):
            if r["fitted"]:
                # Fitted once on the whole split: a level to beat, drawn across the plot.
                ax.axhline(
                    r["val_loss"],
                    color=color,
                    linestyle="--",
                    label=f"{r['arch']} (fitted on {r['train_tokens']:,} tokens in {r['train_seconds']:.1f} s)",
                )
            else:
                ax.plot(
                    [p[key] for p in pts],
                    [p["val_loss"] for p in pts],
                    "-o",
                    markersize=3,
                    color=color,
                    label=r["arch"],
                )
    axes[0].set_xlabel("training tokens")
    axes[1].set_xlabel("training time (s)")
    for ax in axes:
        ax.set_xlim(left=0)  # budgets start from nothing; a zoomed axis hides how little of it a curve covers
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
