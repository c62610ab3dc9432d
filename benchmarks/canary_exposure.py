"""Memorisation audit: the "secret sharer" exposure of a canary (Carlini et al., 2019), without and with DP-SGD.

    .venv/bin/python benchmarks/canary_exposure.py [--steps 600] [--copies 10] [--epsilon 8] [--digits 4]

A generated corpus of short template sentences gets one canary, "my pin code is D D D D", inserted `copies` times.
A small character-level GRU language model (lmforge's `gru` family, 1 layer x 128; Opacus's DPGRU under DP-SGD,
same weights) is trained on fixed 48-character windows of the corpus for the same number of steps twice: plainly
(AdamW) and with DP-SGD at (epsilon, 1e-5) through Opacus (noise calibrated for the planned steps, Poisson sampling,
per-window clipping at 1.0: a window is the privacy unit). Exposure = log2(|candidates|) - log2(rank of the canary
among all 10^digits secrets by the model's log-likelihood of "my pin code is " + secret); the maximum,
log2(10^digits), means the canary is the model's most likely secret (memorised), ~1 means chance. Prints JSON.
"""

from __future__ import annotations

import argparse
import math
import random
import time
import warnings

import torch
import torch.nn.functional as F
from common import emit, machine

from lmforge.models.registry import build_model

WINDOW = 48
PREFIX = "my pin code is "
NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
VERBS = ["sees", "calls", "meets", "helps", "likes", "visits"]
PLACES = ["at home", "in the park", "at work", "in town", "at the station"]


def corpus(rng: random.Random, sentences: int, canary: str, copies: int) -> str:
    lines = []
    for _ in range(sentences):
        n = rng.randint(1, 99)
        lines.append(
            f"{rng.choice(NAMES)} {rng.choice(VERBS)} {rng.choice(NAMES)} {rng.choice(PLACES)} at {n}."
        )
    for _ in range(copies):
        lines.insert(rng.randrange(len(lines)), canary)
    return "\n".join(lines) + "\n"


def windows(ids: torch.Tensor) -> torch.Tensor:
    n = (len(ids) - 1) // WINDOW
    return ids[: n * WINDOW + 1].unfold(0, WINDOW + 1, WINDOW)


def train(data: torch.Tensor, vocab: int, steps: int, batch: int, epsilon: float | None, seed: int) -> dict:
    torch.manual_seed(seed)
    model = build_model("gru", dict(vocab_size=vocab, n_embd=64, n_hidden=128, n_layer=1, block_size=WINDOW))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rate = batch / len(data)
    net, noise, accountant = model, 0.0, None
    if epsilon is not None:
        from opacus import GradSampleModule
        from opacus.accountants import RDPAccountant
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.optimizers import DPOptimizer
        from opacus.validators import ModuleValidator

        warnings.filterwarnings("ignore", category=UserWarning)
        model = ModuleValidator.fix(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        noise = get_noise_multiplier(target_epsilon=epsilon, target_delta=1e-5, sample_rate=rate, steps=steps)
        net = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=noise,
            max_grad_norm=1.0,
            expected_batch_size=batch,
            loss_reduction="mean",
        )
        accountant = RDPAccountant()
    g = torch.Generator().manual_seed(seed + 1)
    started = time.perf_counter()
    for _ in range(steps):
        if epsilon is None:
            idx = torch.randint(len(data), (batch,), generator=g)
        else:  # Poisson sampling
            idx = (torch.rand(len(data), generator=g) < rate).nonzero().flatten()
            if len(idx) == 0:
                continue
        x = data[idx]
        loss = F.cross_entropy(net(x[:, :-1]).reshape(-1, vocab), x[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if accountant is not None:
            accountant.step(noise_multiplier=noise, sample_rate=rate)
    return {
        "model": model,
        "seconds": time.perf_counter() - started,
        "final_loss": float(loss.detach()),
        "epsilon_spent": None if accountant is None else accountant.get_epsilon(1e-5),
        "noise_multiplier": noise,
    }


@torch.no_grad()
def exposure(model, stoi: dict, secret: str, digits: int) -> dict:
    model.eval()
    candidates = [" ".join(f"{i:0{digits}d}") for i in range(10**digits)]
    texts = [PREFIX + c for c in candidates]
    ids = torch.tensor([[stoi[ch] for ch in "\n" + t] for t in texts])
    scores = torch.empty(len(texts))
    start = len(PREFIX) + 1  # only the secret's characters are scored
    for b in range(0, len(texts), 1000):
        x = ids[b : b + 1000]
        logp = model(x[:, :-1]).log_softmax(-1).gather(-1, x[:, 1:, None]).squeeze(-1)
        scores[b : b + 1000] = logp[:, start - 1 :].sum(1)
    target = scores[candidates.index(secret)]
    rank = int((scores > target).sum()) + 1
    return {"rank": rank, "exposure": math.log2(len(candidates)) - math.log2(rank)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--sentences", type=int, default=8000)
    ap.add_argument("--digits", type=int, default=4)
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rng = random.Random(args.seed)
    secret = " ".join(f"{rng.randrange(10**args.digits):0{args.digits}d}")
    text = corpus(rng, args.sentences, PREFIX + secret, args.copies)
    chars = sorted(set(text) | set("0123456789"))
    stoi = {ch: i for i, ch in enumerate(chars)}
    data = windows(torch.tensor([stoi[ch] for ch in text]))
    rows = []
    for epsilon in (None, args.epsilon):
        run = train(data, len(chars), args.steps, args.batch, epsilon, args.seed)
        rows.append(
            {
                "dp_epsilon_target": epsilon,
                "epsilon_spent": run["epsilon_spent"],
                "noise_multiplier": round(run["noise_multiplier"], 3),
                "final_train_loss": round(run["final_loss"], 3),
                "train_seconds": round(run["seconds"], 1),
                **exposure(run["model"], stoi, secret, args.digits),
            }
        )
    emit(
        {
            "benchmark": "canary_exposure",
            "corpus_chars": len(text),
            "windows": len(data),
            "copies": args.copies,
            "candidates": 10**args.digits,
            "max_exposure": math.log2(10**args.digits),
            "steps": args.steps,
            "batch": args.batch,
            "rows": rows,
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
