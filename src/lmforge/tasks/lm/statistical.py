"""Fitting the statistical models (the n-gram): one counting pass instead of the gradient loop, then the same
evaluation, checkpoint folder, `latest`/`best` pointers and metrics.jsonl as a trained run."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from lmforge import checkpoint as ckpt
from lmforge.config import RunConfig
from lmforge.data.prepare import text_convention
from lmforge.data.shards import TokenShards, load_prepared
from lmforge.errors import TokenizerError
from lmforge.eval.perplexity import summarize
from lmforge.models.registry import model_class
from lmforge.train.trainer import RunResult


def fit_statistical(cfg: RunConfig, data_dir: Path, run_dir: Path, progress: bool = True):
    manifest, tokenizer = load_prepared(data_dir)
    if tokenizer.eos_id is None:
        raise TokenizerError(
            "the n-gram model needs an end-of-sequence token in the tokenizer; prepare the data again"
        )
    m = cfg.model
    m.vocab_size, m.eos_id, m.unk_id = tokenizer.vocab_size, tokenizer.eos_id, tokenizer.unk_id
    m.bos_id = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    cfg.validate()
    train = TokenShards(data_dir, "train")
    if progress:
        print(f"fitting a {m.order}-gram model on {train.tokens:,} tokens", file=sys.stderr, flush=True)
    start = time.perf_counter()
    model = model_class(cfg.arch).fit(m, [np.asarray(a) for a in train.arrays])
    seconds = time.perf_counter() - start
    metrics = {}
    if "val" in manifest["splits"]:
        val = TokenShards(data_dir, "val")
        if val.tokens:
            nats, count = model.score_stream(np.concatenate([np.asarray(a) for a in val.arrays]))
            r = summarize(nats, count, val.bytes)
            metrics = {
                "val_loss": r["loss"],
                "val_perplexity": r["perplexity"],
                "val_bits_per_byte": r["bits_per_byte"],
            }
    existed = run_dir.exists()
    try:
        path = _write_run(cfg, data_dir, run_dir, tokenizer, model, train, metrics, seconds)
    except BaseException:
        if not existed:  # a failed fit (a full disk...) leaves no half-written run behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return RunResult(
        run_dir=run_dir,
        step=1,
        tokens=train.tokens,
        stop_reason="fitted",
        latest=path,
        best=path,
        metrics=metrics,
        seconds=seconds,
        tokens_per_s=train.tokens / max(seconds, 1e-9),
    )


def _write_run(
    cfg, data_dir: Path, run_dir: Path, tokenizer, model, train, metrics: dict, seconds: float
) -> Path:
    m = cfg.model
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt.clean_stale(run_dir)
    cfg.save_yaml(run_dir / "config.yaml")
    metrics_path = run_dir / "metrics.jsonl"
    record = {
        "step": 1,
        "tokens": train.tokens,
        "fit_seconds": seconds,
        "tokens_per_s": train.tokens / seconds,
        **metrics,
    }
    metrics_path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    config = {
        "arch": cfg.arch,
        "model": cfg.to_dict()["model"],
        "run": cfg.to_dict(),
        "data": {
            "dir": str(data_dir.resolve()),
            "manifest_tokens": train.tokens,
            "text": text_convention(train.manifest),  # how `evaluate --data FILE.txt` must read a text file
        },
        "step": 1,
        "tokens": train.tokens,
        "metrics": metrics,
    }
    card = (
        f"# {run_dir.name}\n\nAn interpolated modified Kneser-Ney {m.order}-gram model fitted with lmforge on "
        f"{train.tokens:,} tokens of `{data_dir}` ({tokenizer.kind} tokenizer, {tokenizer.vocab_size} tokens).\n"
    )
    if metrics:
        card += (
            f"\nValidation: loss {metrics['val_loss']:.4f}, perplexity {metrics['val_perplexity']:.2f}, "
            f"bits per byte {metrics['val_bits_per_byte']:.3f}.\n"
        )
    path = ckpt.save_checkpoint(
        run_dir / "ckpt-0000001", model, tokenizer, config, metrics_file=metrics_path, card=card
    )
    ckpt.point(run_dir, "latest", path)
    ckpt.point(run_dir, "best", path)
    return path
