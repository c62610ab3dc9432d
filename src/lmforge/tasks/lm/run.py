"""Pretraining a language model on a prepared data directory (token shards): the run specification of every
architecture's self-supervised objective (causal, masked, span corruption, truncated BPTT); `pretrain()`, which
starts, resumes, continues a checkpoint (init_from), or hands a statistical model (the n-gram) to its one-pass fit;
and `finetune_lm()`, continued pretraining on raw text files prepared on the fly (`finetune --task lm`).

    pretrain(data="data", out="run", preset="small", max_minutes=10)
    pretrain(data="data", out="run", resume=True, max_steps=4000)
    pretrain(data="data-gpt2", out="run2", init_from="gpt2-imported", max_steps=500, overrides={"optim.lr": 3e-4})
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from lmforge import checkpoint as ckpt
from lmforge.config import RunConfig, build_run_config, parse_overrides
from lmforge.data.prepare import prepare, text_convention
from lmforge.data.shards import TokenShards, load_prepared, read_manifest
from lmforge.errors import ConfigError, DataError, EmptySplitError, TokenizerError
from lmforge.eval.perplexity import evaluate_shards
from lmforge.generate.config import default_generation
from lmforge.models.registry import build_model, is_statistical
from lmforge.outputs import remove
from lmforge.tasks.common import RESUME_HINT, FineTuneOptions, finetune_config
from lmforge.tasks.lm.continued import (
    Origin,
    OriginCard,
    check_model_flags,
    check_origin,
    fit_state,
    init_config,
    load_origin,
    model_changes,
    resumed_config,
)
from lmforge.tasks.lm.statistical import fit_statistical
from lmforge.tokenizers import Tokenizer
from lmforge.train.distributed import refuse_distributed
from lmforge.train.objectives import build_objective
from lmforge.train.privacy import private_pretraining
from lmforge.train.trainer import RunResult, RunSpec, Trainer


def pretrain_spec(
    cfg: RunConfig, data: str | os.PathLike, resume_from: Path | None = None, origin: Origin | None = None
) -> RunSpec:
    """The run specification of pretraining `cfg` on a prepared data directory. A new run's model config takes
    the tokenizer's vocab_size; a run started from `origin` (continued pretraining) keeps the checkpoint's and
    starts from its weights, on data prepared with its tokenizer."""
    data_dir = Path(data)
    manifest, tokenizer = load_prepared(data_dir)
    if resume_from is not None:
        saved_sha = ckpt.read_config(resume_from)["tokenizer"]["sha256"]
        if saved_sha != tokenizer.sha256():
            raise TokenizerError(
                f"{data_dir} was tokenized differently from the run being resumed; resume with its own data"
            )
    elif origin is not None:
        check_data_tokenizer(data_dir, tokenizer, origin)
    else:
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

    state = None if origin is None or origin.state is None else fit_state(origin, cfg)

    def build():
        model = build_model(cfg.arch, cfg.model)
        if state is not None:
            model.load_state_dict(state)
        return model

    splits = manifest["splits"]
    card = [
        f"- data directory: `{data_dir}`",
        f"- training split: {splits['train']['documents']:,} documents, {splits['train']['tokens']:,} tokens",
    ]
    if "val" in splits:
        card.append(
            f"- validation split: {splits['val']['documents']:,} documents, {splits['val']['tokens']:,} tokens"
        )
    record = None if origin is None else origin.record()
    hook = None if record is None else OriginCard(record)
    objective = build_objective(cfg.model, train, t.batch_size, tokenizer)
    if t.dp_epsilon is not None:  # DP-SGD over the split's fixed windows (train/privacy.py)
        notes = [] if hook is None else hook.card()
        objective, hook = private_pretraining(cfg, objective.name, train, notes)
    return RunSpec(
        tokenizer=tokenizer,
        objective=objective,
        build_model=build,
        validate=validate,
        data_size=f"{train.tokens:,} training tokens",
        data_info={
            "dir": str(data_dir.resolve()),
            "manifest_tokens": splits["train"]["tokens"],
            "text": text_convention(manifest),  # how `evaluate --data FILE.txt` must read a text file
        },
        data_card=card,
        config_extras={
            **generation_defaults(cfg, tokenizer),
            **({} if record is None else {"init_from": record}),
        },
        usage="evaluate {run} --data DATA"
        if getattr(cfg.model, "bidirectional", False)
        else "generate {run} --prompt 'Hello'",
        resume_hint=f"continue with `lmforge pretrain --data {data_dir} --out {{run}} --resume`",
        hook=hook,
    )


def generation_defaults(cfg: RunConfig, tokenizer: Tokenizer) -> dict:
    """The "generation" key of a checkpoint that continues text (export-hf writes it as generation_config.json):
    the built-in defaults, with no more new tokens than the context holds."""
    if getattr(cfg.model, "bidirectional", False):
        return {}
    generation = default_generation(tokenizer)
    block = getattr(cfg.model, "block_size", None)
    if block and generation.get("max_new_tokens", 0) >= block:
        generation["max_new_tokens"] = block - 1
    return {"generation": generation}


def check_data_tokenizer(data_dir: Path, tokenizer: Tokenizer, origin: Origin) -> None:
    """Continued pretraining reads tokens as the checkpoint's embeddings know them: the data must have been
    prepared with the checkpoint's own tokenizer."""
    if tokenizer.sha256() == origin.tokenizer_sha256:
        return
    theirs = origin.config.get("tokenizer") or {}
    raise TokenizerError(
        f"{data_dir} was prepared with another tokenizer ({tokenizer.kind}, {tokenizer.vocab_size:,} tokens) than "
        f"{origin.path} ({theirs.get('kind')}, {theirs.get('vocab_size', 0):,} tokens); prepare the text again "
        f"with `lmforge prepare FILES --out DATA --tokenizer {origin.path}`"
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
    resume_hint: str | None = None,
    init_from: str | os.PathLike | None = None,
    seed: int | None = None,
) -> RunResult:
    """Train a model on a prepared data directory; checkpoints go to `out` (a run directory).

    `overrides` are dotted config keys, e.g. {"model.n_layer": 4, "optim.lr": 3e-4}. `max_steps`, `max_minutes`
    and `seed` are shortcuts for train.max_steps / train.max_minutes / train.seed. `on_evaluate` is the run's
    RunSpec.on_evaluate (step, val metrics) -> True to stop (lmforge tune's pruning); `resume_hint`, when given,
    replaces the --resume hint told on Ctrl-C (a caller that continues the run its own way, as lmforge tune).

    `init_from` (a checkpoint folder or run directory: a run's, an import-hf, a save_pretrained export, a pruned
    one) starts a new run from its weights with a fresh optimizer and schedule (continued pretraining): the model
    config is the checkpoint's (flags that change the architecture are refused; model.dropout, the masking
    settings and a shorter model.block_size apply), and `data` must be prepared with its tokenizer
    (`lmforge prepare ... --tokenizer CKPT`). resume=True continues the run in `out`; repeating the flags it
    started with is fine, changing its model is refused.
    """
    run_dir = Path(out)
    overrides = parse_overrides(overrides)
    for key, value in (
        ("train.max_steps", max_steps),
        ("train.max_minutes", max_minutes),
        ("train.seed", seed),
    ):
        if value is not None:
            overrides[key] = value
    latest = ckpt.resume_point(run_dir, resume)
    if latest is not None:
        saved = ckpt.read_config(latest)
        if is_statistical(saved["arch"]):
            raise ConfigError(f"a {saved['arch']} model is fitted in one pass; there is nothing to resume")
        check_origin(saved.get("init_from"), init_from, run_dir)
        cfg = resumed_config(saved, run_dir, config, arch, preset, overrides)
        # An --init-from run's record goes on into every checkpoint; the weights are the run's own.
        origin = Origin.resumed(saved["init_from"]) if saved.get("init_from") else None
        spec = pretrain_spec(cfg, data, resume_from=latest, origin=origin)
        spec.on_evaluate = on_evaluate
        spec.resume_hint = resume_hint or spec.resume_hint
        return Trainer(cfg, spec, run_dir, progress=progress, resume_from=latest).run()
    if init_from is not None:
        origin = load_origin(init_from)
        cfg = init_config(origin, config, arch, preset, overrides)
        spec = pretrain_spec(cfg, data, origin=origin)
        spec.on_evaluate = on_evaluate
        spec.resume_hint = resume_hint or spec.resume_hint
        return Trainer(cfg, spec, run_dir, progress=progress).run()
    cfg = build_run_config(arch=arch, preset=preset, config_file=config, overrides=overrides)
    if is_statistical(cfg.arch):
        refuse_distributed(f"the {cfg.arch} model")
        return fit_statistical(cfg, Path(data), run_dir, progress=progress)
    spec = pretrain_spec(cfg, data)
    spec.on_evaluate = on_evaluate
    spec.resume_hint = resume_hint or spec.resume_hint
    return Trainer(cfg, spec, run_dir, progress=progress).run()


def finetune_lm(
    model: str | os.PathLike,
    train: str | os.PathLike | list[str | os.PathLike],
    out: str | os.PathLike,
    dev: str | os.PathLike | None = None,
    options: FineTuneOptions | None = None,
    max_length: int | None = None,
    max_examples: int | None = None,
    progress: bool = True,
    resume: bool = False,
) -> RunResult:
    """Continued pretraining of checkpoint `model` on raw text files (`lmforge finetune --task lm`): the files are
    prepared with the checkpoint's tokenizer into OUT/data (`dev`, when given, is the validation split; else a
    tenth of the text is held out), then trained on with the checkpoint's objective (causal, masked or span
    corruption) and the fine-tune recipe (tasks.common.finetune_config: `options.epochs` passes over the
    text's windows, lr 5e-5 by default). `max_length` shortens the training window (model.block_size)."""
    options = options or FineTuneOptions()
    options.validate()
    if max_examples is not None:
        raise ConfigError("--max-examples counts labelled examples; --task lm trains on all of the text")
    files = [os.fspath(train)] if isinstance(train, (str, os.PathLike)) else [os.fspath(f) for f in train]
    run_dir = Path(out)
    latest = ckpt.resume_point(run_dir, resume)
    origin = load_origin(model, weights=latest is None)
    data_dir = run_dir / "data"
    if latest is None:
        created = not run_dir.exists()
        prepare_text(files, dev, origin.path, data_dir, progress)
        try:
            return _train_lm(origin, data_dir, run_dir, options, max_length, None, progress)
        except BaseException:
            if ckpt.pointed(run_dir, "latest") is None:  # nothing trained: leave nothing behind
                remove(data_dir)
                if created and run_dir.is_dir() and not any(run_dir.iterdir()):
                    run_dir.rmdir()
            raise
    saved = ckpt.read_config(latest)
    check_origin(saved.get("init_from"), model, run_dir, flag="--model")
    given = {"inputs": files, "val_inputs": [os.fspath(dev)] if dev else []}
    if not (data_dir / "manifest.json").is_file():
        raise DataError(
            f"{data_dir} is gone; the run cannot be resumed without the text it was prepared from"
        )
    was = {k: read_manifest(data_dir)["options"].get(k) for k in given}
    if was != given:
        raise ConfigError(
            f"{run_dir} was trained on --train {' '.join(was['inputs'])}"
            f"{' --dev ' + ' '.join(was['val_inputs']) if was['val_inputs'] else ''}; resume with the same files"
        )
    return _train_lm(origin, data_dir, run_dir, options, max_length, (latest, saved), progress)


def prepare_text(
    files: list[str], dev: str | os.PathLike | None, tokenizer: Path, data_dir: Path, progress: bool
):
    """Raw text files into a data directory with the checkpoint's tokenizer (lmforge.data.prepare): `dev` is the
    validation split; without it a tenth of the documents, or the end of the text when it is one document."""
    common = dict(tokenizer=str(tokenizer), progress=progress, val_inputs=[os.fspath(dev)] if dev else None)
    try:
        prepare(files, data_dir, **common)
    except EmptySplitError:
        if dev:
            raise
        if progress:
            print("one document: holding out the last 10% of the text for validation", flush=True)
        prepare(files, data_dir, split="tail", **common)


def _train_lm(
    origin: Origin,
    data_dir: Path,
    run_dir: Path,
    options: FineTuneOptions,
    max_length: int | None,
    resume: tuple[Path, dict] | None,
    progress: bool,
) -> RunResult:
    """The fine-tune recipe over the checkpoint's model config, trained (or resumed) on `data_dir`."""
    model_cfg = build_run_config(base={"arch": origin.config["arch"], "model": origin.config["model"]}).model
    overrides = parse_overrides(options.overrides)
    if max_length is not None:
        model_cfg.block_size = max_length
    block = int(overrides.get("model.block_size", model_cfg.block_size))
    windows = max(1, read_manifest(data_dir)["splits"]["train"]["tokens"] // max(1, block))
    cfg = finetune_config(origin.config["arch"], model_cfg, windows, options, lr=options.lr or 5e-5)
    if resume is None:
        check_model_flags(origin, cfg, flag="--model")
        spec = pretrain_spec(cfg, data_dir, origin=origin)
    else:
        latest, saved = resume
        for key, was, now in model_changes(saved["model"], cfg):
            raise ConfigError(
                f"{run_dir} was trained with {key} {was}, this command asks for {now}; resume with the command "
                "the run started with"
            )
        spec = pretrain_spec(cfg, data_dir, resume_from=latest, origin=Origin.resumed(saved["init_from"]))
    spec.resume_hint = RESUME_HINT
    options.attach(spec)
    return Trainer(
        cfg, spec, run_dir, progress=progress, resume_from=None if resume is None else resume[0]
    ).run()
