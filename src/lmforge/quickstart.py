"""The quickstart recipe: a short script that wires the components (prepare, pretrain, evaluate, generate)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lmforge.config import build_run_config
from lmforge.data.corpus import BUILTIN_CORPORA, write_builtin_corpus
from lmforge.data.prepare import prepare
from lmforge.data.shards import TokenShards
from lmforge.device import autocast, autocast_dtype, keep_freed_memory, pick_device
from lmforge.errors import ConfigError, DataError
from lmforge.eval.baseline import unigram_baseline
from lmforge.eval.perplexity import evaluate
from lmforge.lm import load
from lmforge.models.registry import build_model
from lmforge.outputs import remove, staging_path
from lmforge.tasks.lm.run import pretrain
from lmforge.tokenizers import Tokenizer
from lmforge.train.objectives import build_objective
from lmforge.train.optim import build_optimizer

SAMPLE_PROMPTS = {
    "stdlib-docs": ["The ", "Return a new", "This module provides"],
    "stdlib-code": ["def ", "class ", "import "],
}
MIN_TRAIN_SECONDS = 20


def quickstart(
    corpus: str = "stdlib-docs",
    out: str | os.PathLike = "lmforge-quickstart",
    minutes: float = 5.0,
    preset: str = "small",
    vocab_size: int = 4096,
    seed: int = 0,
    overwrite: bool = False,
    max_steps: int | None = None,
    console: Console | None = None,
) -> dict:
    """Prepare a corpus, pretrain a small GPT for about `minutes` in all, evaluate it against a unigram baseline,
    print samples and the commands to try next. Returns the figures as a dict."""
    console = console or Console(stderr=False, highlight=False)
    if not minutes > 0:
        raise ConfigError(f"--minutes must be positive, got {minutes}")
    out = Path(out)
    old = None
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out} already holds a quickstart; pass --overwrite or choose another --out")
        # Moved aside, not deleted: it is removed only once the new quickstart is complete, and put back if the
        # new one fails or is interrupted.
        old = staging_path(out, "old")
        remove(old)
        os.replace(out, old)
    try:
        figures = run_quickstart(corpus, out, minutes, preset, vocab_size, seed, max_steps, console)
    except BaseException:
        if old is not None:
            remove(out)
            os.replace(old, out)
        raise
    if old is not None:
        remove(old)
    return figures


def run_quickstart(
    corpus: str,
    out: Path,
    minutes: float,
    preset: str,
    vocab_size: int,
    seed: int,
    max_steps: int | None,
    console: Console,
) -> dict:
    """The quickstart's work into `out` (which quickstart() has emptied or moved aside)."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    console.rule("[bold]1. corpus")
    if corpus in BUILTIN_CORPORA:
        corpus_dir = out / "corpus"
        stats = write_builtin_corpus(corpus, corpus_dir)
        console.print(
            f"built-in corpus {corpus!r}: {stats['documents']:,} documents, {stats['bytes'] / 1e6:.1f} MB"
        )
        inputs = [str(corpus_dir)]
    else:
        inputs = [corpus]

    console.rule("[bold]2. prepare: clean, deduplicate, train a tokenizer, write token shards")
    data_dir = out / "data"
    # Too few documents for a document-level split (e.g. one long file): prepare holds out the end of the corpus.
    manifest = prepare(inputs, str(data_dir), tokenizer="bpe", vocab_size=vocab_size, seed=seed)
    if manifest["options"]["split"] == "tail":
        console.print(
            "too few documents for a per-document split; holding out the last 10% of the text instead"
        )
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    console.print(
        f"train: {train['documents']:,} documents, {train['tokens']:,} tokens; "
        f"validation: {val['documents']:,} documents, {val['tokens']:,} tokens "
        f"({manifest['tokenizer']['kind']} tokenizer, {manifest['vocab_size']} tokens)"
    )

    console.rule("[bold]3. pretrain a small GPT")
    # Training gets what is left of the budget after preparing, scoring the validation split (forward passes only:
    # ~1/3 of a training step per batch of tokens), the samples and a 5% margin.
    per_step = tokens_per_step = None
    if not max_steps:
        per_step, tokens_per_step = _time_training_steps(data_dir, preset, seed)
    evaluation = val["tokens"] / tokens_per_step * per_step / 3 if per_step else 0.0
    train_seconds = max(MIN_TRAIN_SECONDS, minutes * 60 * 0.95 - (time.perf_counter() - started) - evaluation)
    if max_steps:
        steps, cap_minutes = max_steps, train_seconds / 60 * 1.15
    else:
        # The time ends the run (periodic evaluations and checkpoints take ~5% besides) and the learning-rate
        # schedule decays to the end of it; the step estimate sizes the evaluation interval and an upper bound.
        cap_minutes = train_seconds / 1.05 / 60
        steps = max(20, int(cap_minutes * 60 / per_step))
    run_dir = out / "run"
    result = pretrain(
        data=str(data_dir),
        out=str(run_dir),
        preset=preset,
        overrides={
            "train.seed": seed,
            "train.eval_every": max(min(50, steps), steps // 5),
            "train.eval_tokens": 32768,
            "optim.warmup_steps": max(10, steps // 20),
        },
        max_steps=steps if max_steps else 2 * steps,
        max_minutes=cap_minutes,
    )

    console.rule("[bold]4. evaluate against a unigram baseline")
    model_eval = evaluate(run_dir / "best", data_dir)
    baseline = unigram_baseline(data_dir)
    table = Table("model", "loss (nats/token)", "perplexity", "bits per byte")
    table.add_row(
        "unigram baseline",
        f"{baseline['loss']:.3f}",
        f"{baseline['perplexity']:.1f}",
        f"{baseline['bits_per_byte']:.3f}",
    )
    table.add_row(
        f"GPT ({preset})",
        f"{model_eval['loss']:.3f}",
        f"{model_eval['perplexity']:.1f}",
        f"{model_eval['bits_per_byte']:.3f}",
    )
    console.print(table)

    console.rule("[bold]5. samples")
    lm = load(run_dir / "best")
    samples = []
    for i, prompt in enumerate(SAMPLE_PROMPTS.get(corpus, ["The ", "A ", "In "])):
        text = lm.generate(prompt, max_new_tokens=60, temperature=0.8, top_k=50, seed=seed + i)
        samples.append({"prompt": prompt, "completion": text})
        console.print(f"[bold]{prompt}[/bold]{text}\n")

    total = time.perf_counter() - started
    console.rule("[bold]done")
    console.print(f"finished in {total / 60:.1f} minutes; checkpoint: {run_dir / 'best'}")
    console.print("\nnext, try:")
    for cmd in (
        f"lmforge generate {run_dir} --prompt 'The ' --max-new-tokens 100",
        f"lmforge evaluate {run_dir} --data {data_dir} --json",
        f"lmforge info {run_dir}",
        f"lmforge pretrain --data {data_dir} --out {run_dir} --resume --max-steps {result.step * 2}",
        f"tensorboard --logdir {run_dir / 'tensorboard'}",
    ):
        console.print(f"  {cmd}")
    return {
        "corpus": corpus,
        "seconds": round(total, 1),
        "train_seconds": round(result.seconds, 1),
        "steps": result.step,
        "tokens_per_s": round(result.tokens_per_s, 1),
        "model": model_eval,
        "unigram": baseline,
        "checkpoint": str(run_dir / "best"),
        "samples": samples,
    }


def _time_training_steps(data_dir: Path, preset: str, seed: int) -> tuple[float, int]:
    """Seconds per training step of the preset on this machine (timed over a few steps), and tokens per step."""
    import torch

    cfg = build_run_config(preset=preset)
    tokenizer = Tokenizer.load(data_dir)
    cfg.model.vocab_size = tokenizer.vocab_size
    device = pick_device(cfg.train.device)
    model = build_model(cfg.arch, cfg.model).to(device)
    opt = build_optimizer(model, cfg.optim, device)
    # Timed as the trainer will run it: the same precision (train.precision auto may pick bf16) and allocator.
    amp_dtype = autocast_dtype(device, cfg.train.precision, model)
    if device.type == "cpu" and cfg.train.keep_freed_memory:
        keep_freed_memory()
    objective = build_objective(cfg.model, TokenShards(data_dir, "train"), cfg.train.batch_size, tokenizer)
    gen = torch.Generator().manual_seed(seed)

    def step() -> int:
        batch = tuple(t.to(device) for t in objective.next_batch(gen))
        with autocast(device, amp_dtype):
            loss = objective.loss_sum(model, batch) / batch[1].numel()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return batch[1].numel()

    tokens = step()  # warm-up (allocations, first-call overheads)
    n = 5
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n, tokens
