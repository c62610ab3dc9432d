"""Pretraining a language model on a prepared data directory (token shards): the run specification of every
architecture's self-supervised objective (causal, masked, span corruption, truncated BPTT), and `pretrain()`, which
starts, resumes, or hands a statistical model (the n-gram) to its one-pass fit.

    pretrain(data="data", out="run", preset="small", max_minutes=10)
    pretrain(data="data", out="run", resume=True, max_steps=4000)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from lmforge import checkpoint as ckpt
from lmforge.config import RunConfig, build_run_config, parse_overrides
from lmforge.data.shards import TokenShards, load_prepared
from lmforge.errors import ConfigError, TokenizerError
from lmforge.eval.perplexity import evaluate_shards
from lmforge.models.registry import build_model, is_statistical
from lmforge.tasks.lm.statistical import fit_statistical
from lmforge.train.objectives import build_objective
from lmforge.train.trainer import RunResult, RunSpec, Trainer


def pretrain_spec(cfg: RunConfig, data: str | os.PathLike, resume_from: Path | None = None) -> RunSpec:
    """The run specification of pretraining `cfg` on a prepared data directory; the model config's vocab_size
    becomes the tokenizer's."""
    data_dir = Path(data)
    manifest, tokenizer = load_prepared(data_dir)
    if resume_from is not None:
        saved_sha = ckpt.read_config(resume_from)["tokenizer"]["sha256"]
        if saved_sha != tokenizer.sha256():
            raise TokenizerError(
                f"{data_dir} was tokenized differently from the run being resumed; resume with its own data"
            )
    cfg.model.vocab_size = tokenizer.vocab_size
    cfg.model.validate()
    train = TokenShards(data_dir, "train")
    val = TokenShards(data_dir, "val") if "val" in manifest["splits"] else None
    if val is not None and val.tokens < 2:
        val = None
    t = cfg.train

    def validate(model, device, amp_dtype) -> dict | None:
        if val is None:
            return None
        return evaluate_shards(model, val, tokenizer, t.batch_size, t.eval_tokens or None, device, amp_dtype)

    splits = manifest["splits"]
    card = [
        f"- data directory: `{data_dir}`",
        f"- training split: {splits['train']['documents']:,} documents, {splits['train']['tokens']:,} tokens",
    ]
    if "val" in splits:
        card.append(
            f"- validation split: {splits['val']['documents']:,} documents, {splits['val']['tokens']:,} tokens"
        )
    return RunSpec(
        tokenizer=tokenizer,
        objective=build_objective(cfg.model, train, t.batch_size, tokenizer),
        build_model=lambda: build_model(cfg.arch, cfg.model),
        validate=validate,
        data_size=f"{train.tokens:,} training tokens",
        data_info={"dir": str(data_dir.resolve()), "manifest_tokens": splits["train"]["tokens"]},
        data_card=card,
        usage="evaluate {run} --data DATA"
        if getattr(cfg.model, "bidirectional", False)
        else "generate {run} --prompt 'Hello'",
        resume_hint=f"continue with `lmforge pretrain --data {data_dir} --out {{run}} --resume`",
    )


def pretrain(
    data: str | os.PathLike,
    out: str | os.PathLike,
    config: str | os.PathLike | None = None,
    arch: str | None = None,
    preset: str | None = None,
    overrides: dict | list[str] | None = None,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    resume: bool = False,
    progress: bool = True,
    on_evaluate: Callable[[int, dict], bool] | None = None,
) -> RunResult:
    """Train a model on a prepared data directory; checkpoints go to `out` (a run directory).

    `overrides` are dotted config keys, e.g. {"model.n_layer": 4, "optim.lr": 3e-4}. `max_steps` and
    `max_minutes` are shortcuts for train.max_steps / train.max_minutes. `on_evaluate` is the run's
    RunSpec.on_evaluate (step, val metrics) -> True to stop (lmforge tune's pruning).
    """
    run_dir = Path(out)
    overrides = parse_overrides(overrides)
    if max_steps is not None:
        overrides["train.max_steps"] = max_steps
    if max_minutes is not None:
        overrides["train.max_minutes"] = max_minutes
    latest = ckpt.resume_point(run_dir, resume)
    if latest is not None:
        saved = ckpt.read_config(latest)
        if is_statistical(saved["arch"]):
            raise ConfigError(f"a {saved['arch']} model is fitted in one pass; there is nothing to resume")
        if any(k.startswith("model.") for k in overrides) or preset or arch or config:
            raise ConfigError(
                "a resumed run keeps its model and config; only optim.* and train.* overrides apply"
            )
        cfg = build_run_config(base=saved["run"], overrides=overrides)
        spec = pretrain_spec(cfg, data, resume_from=latest)
        spec.on_evaluate = on_evaluate
        return Trainer(cfg, spec, run_dir, progress=progress, resume_from=latest).run()
    cfg = build_run_config(arch=arch, preset=preset, config_file=config, overrides=overrides)
    if is_statistical(cfg.arch):
        return fit_statistical(cfg, Path(data), run_dir, progress=progress)
    spec = pretrain_spec(cfg, data)
    spec.on_evaluate = on_evaluate
    return Trainer(cfg, spec, run_dir, progress=progress).run()
