"""Memorisation audit: the "secret sharer" exposure of a canary (Carlini et al., 2019), without and with DP-SGD.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/canary_exposure.py [--steps 600] [--copies 1] [--seeds 0,1,2]
        [--epsilon 8] [--digits 4] [--sentences 2000] [--out /tmp/lmforge-canary]

For each seed: a generated corpus of short template sentences ("alice sees bob at home at 42.") gets one random
canary, "my pin code is D D D D", inserted `copies` times (1: the full audit's single copy); a validation file of
other such sentences holds no canary. `lmforge prepare` (character tokenizer) and `lmforge pretrain` then train a
small character-level GPT (--n-layer x --n-embd, block 48) for the same --steps twice: plainly, and with DP-SGD
(`--train.dp_epsilon`, delta 1e-5: Opacus, noise calibrated for the planned steps, Poisson sampling over the fixed
48-character windows, per-window clipping at 1.0; a window is the privacy unit, so `copies` copies are protected
at group level copies x epsilon). Exposure = log2(|candidates|) - log2(rank of the canary among all 10^digits
secrets by the model's log-likelihood of "\\nmy pin code is " + secret); its maximum, log2(10^digits), means the
canary is the model's most likely secret (memorised); a secret the model has not singled out has an expected
exposure of about 1/ln 2 = 1.44 bits (a uniform rank). Prints JSON: per seed and model, the rank, the exposure, the
final training loss, the epsilon spent; and per model the mean and the largest exposure over the seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import time
from pathlib import Path

import torch
from common import emit, machine

PREFIX = "my pin code is "
BLOCK = 48
NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
VERBS = ["sees", "calls", "meets", "helps", "likes", "visits"]
PLACES = ["at home", "in the park", "at work", "in town", "at the station"]


def sentences(rng: random.Random, n: int) -> list[str]:
    return [
        f"{rng.choice(NAMES)} {rng.choice(VERBS)} {rng.choice(NAMES)} {rng.choice(PLACES)} at {rng.randint(1, 99)}."
        for _ in range(n)
    ]


def corpus(rng: random.Random, n: int, canary: str, copies: int) -> str:
    lines = sentences(rng, n)
    for _ in range(copies):
        lines.insert(rng.randrange(len(lines)), canary)
    return "\n".join(lines) + "\n"


def train(data: Path, out: Path, args, seed: int, epsilon: float | None) -> dict:
    from lmforge.tasks.lm.run import pretrain

    overrides = {
        "model.n_layer": args.n_layer,
        "model.n_head": 4,
        "model.n_embd": args.n_embd,
        "model.block_size": BLOCK,
        "model.dropout": 0.0,
        "train.batch_size": args.batch,
        "train.eval_every": args.steps,
        "train.log_every": 10,
        "train.tensorboard": False,
        "optim.lr": args.lr,
        "optim.warmup_steps": args.steps // 20,
    }
    if epsilon is not None:
        overrides.update({"train.dp_epsilon": epsilon, "train.dp_delta": args.delta})
    started = time.perf_counter()
    result = pretrain(data, out, overrides=overrides, max_steps=args.steps, seed=seed, progress=False)
    lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    losses = [r["loss"] for r in map(json.loads, lines) if "loss" in r]
    return {
        "path": result.latest,
        "seconds": time.perf_counter() - started,
        "final_train_loss": sum(losses[-3:]) / len(losses[-3:]),
        "val_loss": result.metrics.get("val_loss"),
        "epsilon_spent": result.metrics.get("dp_epsilon"),
    }


@torch.no_grad()
def exposure(path: Path, secret: str, digits: int) -> dict:
    import lmforge

    lm = lmforge.load(path)
    model, tok = lm.model, lm.tokenizer
    model.eval()
    candidates = [" ".join(f"{i:0{digits}d}") for i in range(10**digits)]
    ids = torch.tensor([tok.encode("\n" + PREFIX + c) for c in candidates])
    scored = len(tok.encode(candidates[0]))  # only the secret's tokens are scored
    scores = torch.empty(len(candidates))
    for b in range(0, len(candidates), 500):
        x = ids[b : b + 500]
        logp = model(x[:, :-1]).float().log_softmax(-1).gather(-1, x[:, 1:, None]).squeeze(-1)
        scores[b : b + 500] = logp[:, -scored:].sum(1)
    rank = int((scores > scores[candidates.index(secret)]).sum()) + 1
    return {"rank": rank, "exposure": round(math.log2(len(candidates)) - math.log2(rank), 3)}


def audit_seed(seed: int, args, out: Path) -> list[dict]:
    from lmforge.data.prepare import prepare

    rng = random.Random(seed)
    secret = " ".join(f"{rng.randrange(10**args.digits):0{args.digits}d}")
    folder = out / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "train.txt").write_text(
        corpus(rng, args.sentences, PREFIX + secret, args.copies), encoding="utf-8"
    )
    (folder / "val.txt").write_text("\n".join(sentences(rng, args.sentences // 10)) + "\n", encoding="utf-8")
    prepare(
        [str(folder / "train.txt")],
        folder / "data",
        tokenizer="char",
        val_inputs=[str(folder / "val.txt")],
        progress=False,
    )
    rows = []
    for epsilon in (None, args.epsilon):
        run = train(folder / "data", folder / ("plain" if epsilon is None else "dp"), args, seed, epsilon)
        rows.append(
            {
                "seed": seed,
                "dp_epsilon_target": epsilon,
                "epsilon_spent": None if run["epsilon_spent"] is None else round(run["epsilon_spent"], 3),
                "final_train_loss": round(run["final_train_loss"], 3),
                "val_loss": None if run["val_loss"] is None else round(run["val_loss"], 3),
                "train_seconds": round(run["seconds"], 1),
                **exposure(run["path"], secret, args.digits),
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--copies", type=int, default=1, help="copies of the canary in the training text")
    ap.add_argument("--sentences", type=int, default=2000, help="template sentences in the training text")
    ap.add_argument("--digits", type=int, default=4, help="the secret's digits: 10^digits candidates")
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument(
        "--seeds", default="0,1,2", help="comma-separated: one canary, corpus and pair of runs each"
    )
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--out", default="/tmp/lmforge-canary")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    rows = [row for seed in args.seeds.split(",") if seed for row in audit_seed(int(seed), args, out)]
    summary = {}
    for name, eps in (("plain", None), ("dp", args.epsilon)):
        values = [r["exposure"] for r in rows if r["dp_epsilon_target"] == eps]
        summary[name] = {"mean_exposure": round(statistics.mean(values), 3), "max_exposure": max(values)}
    emit(
        {
            "benchmark": "canary_exposure",
            "copies": args.copies,
            "sentences": args.sentences,
            "candidates": 10**args.digits,
            "max_exposure": round(math.log2(10**args.digits), 3),
            "chance_exposure": round(1 / math.log(2), 3),
            "steps": args.steps,
            "batch": args.batch,
            "model": f"gpt {args.n_layer} x {args.n_embd}, block {BLOCK}, character tokenizer",
            "summary": summary,
            "rows": rows,
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
