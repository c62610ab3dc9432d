"""What the fine-tuning tasks share: the starting backbone (a pretrained checkpoint, or a recurrent one trained from
scratch with a tokenizer made from the training texts), the one fine-tune config recipe, and the check that a
rebuilt run may continue the checkpoint it resumes from."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.checkpoint import load_checkpoint
from lmforge.config import OptimConfig, RunConfig, TrainConfig, parse_overrides, set_dotted
from lmforge.data.augment import AugmentOptions, augment_tagged, augment_texts
from lmforge.errors import CheckpointError, ConfigError
from lmforge.eval.seq2seq_metrics import looks_chinese
from lmforge.tokenizers import Tokenizer
from lmforge.train.trainer import RunSpec

SCRATCH = ("lstm", "gru")  # backbones trained from scratch, with a tokenizer made from the training texts
SCRATCH_CLASSIFIERS = (*SCRATCH, "cnn")  # and Kim's CNN, a classifier backbone only (models/cnn.py)
RESUME_HINT = "continue with the same `lmforge finetune` command plus --resume"
# Model keys that say how the model computes, not what it is: a resumed run may differ in them (or predate them).
EXECUTION_KEYS = ("unpad",)


@dataclass
class FineTuneOptions:
    """The options every fine-tune shares (the CLI's --epochs, --batch-size, --lr, ... and `overrides`, the dotted
    --model.* / --optim.* / --train.* keys, applied last)."""

    epochs: float = 3
    batch_size: int | None = None  # None: the task's default (finetune_config's batch_size)
    lr: float | None = None  # None: the task's default
    patience: int | None = None
    max_minutes: float | None = None
    max_steps: int | None = None  # set: train this many optimizer steps instead of `epochs` passes
    seed: int = 0
    overrides: dict | list[str] | None = None
    # RunSpec.on_evaluate of the run: (step, val metrics) -> True to stop it (lmforge tune reports and prunes)
    on_evaluate: Callable[[int, dict], bool] | None = None
    # RunSpec.resume_hint told on Ctrl-C, when the caller continues the run its own way (lmforge tune's trials)
    resume_hint: str | None = None
    # --augment: new training examples made from the training split only (data/augment.py), never dev/test
    augment: AugmentOptions | None = None

    def validate(self) -> None:
        if not self.epochs > 0 or (self.batch_size is not None and self.batch_size < 1):
            raise ConfigError("--epochs must be positive and --batch-size at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"--max-steps must be at least 1, not {self.max_steps}")

    def attach(self, spec: RunSpec) -> RunSpec:
        """Put the caller's hooks on the run's spec: on_evaluate, and its own resume hint when it has one."""
        spec.on_evaluate = self.on_evaluate
        if self.resume_hint is not None:
            spec.resume_hint = self.resume_hint
        return spec


def augmented(items: list, augment: AugmentOptions | None) -> list:
    """The training examples followed by up to `augment.n` new ones each: classification Examples get new texts
    (labels and pairs kept), NER Sentences new words with their tags aligned. Called on the training split only."""
    if augment is None or not items:
        return items
    if hasattr(items[0], "tags"):
        new = augment_tagged([(s.words, s.tags) for s in items], augment)
        return items + [
            dataclasses.replace(s, words=w, tags=t) for s, outs in zip(items, new) for w, t in outs
        ]
    new = augment_texts([ex.text for ex in items], augment)
    return items + [dataclasses.replace(ex, text=t) for ex, outs in zip(items, new) for t in outs]


def augment_info(augment: AugmentOptions | None, original: int, total: int) -> dict:
    """The checkpoint config's record of --augment (under data.augment): the method and its options, the training
    examples read and the training set it made; {} without augmentation."""
    if augment is None:
        return {}
    used = {"method": augment.method, "n": augment.n, "seed": augment.seed}
    if augment.method in ("eda", "noise"):
        used["alpha"] = augment.alpha
    resource = {
        "eda": augment.vectors,
        "contextual": augment.model,
        "backtranslate": ",".join(augment.via or ()),
    }
    if resource.get(augment.method):
        used["model"] = resource[augment.method]
    return {"augment": {**used, "original": original, "training_examples": total}}


def augment_card(info: dict) -> list[str]:
    """The model card's line saying that (and how) the training set was augmented."""
    a = info.get("augment")
    if not a:
        return []
    via = f" with `{a['model']}`" if a.get("model") else ""
    return [
        f"- augmented (`--augment {a['method']} --augment-n {a['n']}`{via}): {a['original']:,} training "
        f"examples became {a['training_examples']:,}; dev/test untouched"
    ]


def finetune_config(
    arch: str,
    model,
    examples: int,
    options: FineTuneOptions,
    lr: float,
    warmup: bool = True,
    beta2: float | None = 0.999,
    batch_size: int = 32,
) -> RunConfig:
    """The fine-tune recipe: AdamW with weight decay 0.01 and a linear decay to zero after a warm-up of a tenth of
    the steps (none with warmup=False), `options.epochs` passes over `examples` training examples (or
    `options.max_steps` steps), batches of `options.batch_size` (default: the task's `batch_size`), a validation
    per epoch, only the last checkpoint kept besides the best, no TensorBoard. The overrides apply last; the steps, the
    validation interval and the warm-up follow the final batch size and step count unless they are overridden."""
    overrides = parse_overrides(options.overrides)
    optim = OptimConfig(lr=lr, weight_decay=0.01, warmup_steps=0, schedule="linear", min_lr_ratio=0.0)
    if beta2 is not None:
        optim.beta2 = beta2
    cfg = RunConfig(
        arch=arch,
        model=model,
        optim=optim,
        train=TrainConfig(
            batch_size=batch_size if options.batch_size is None else options.batch_size,
            max_minutes=options.max_minutes,
            patience=options.patience,
            seed=options.seed,
            keep_last=1,
            tensorboard=False,
        ),
    )
    for key, value in overrides.items():
        set_dotted(cfg, key, value)
    t = cfg.train
    steps_per_epoch = math.ceil(examples / max(1, t.batch_size))
    if "train.max_steps" not in overrides:
        t.max_steps = options.max_steps or max(1, math.ceil(options.epochs * steps_per_epoch))
    if "train.eval_every" not in overrides:
        t.eval_every = max(1, min(steps_per_epoch, t.max_steps))
    if warmup and "optim.warmup_steps" not in overrides:
        cfg.optim.warmup_steps = t.max_steps // 10
    return cfg


def load_backbone(model: torch.nn.Module, state: dict | None) -> None:
    """Put a pretrained backbone's weights into a task model (its head stays freshly initialised)."""
    if state is None:
        return
    missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    if unexpected or [
        k for k in missing if "lm_head" not in k
    ]:  # an LM head the checkpoint ties need not be saved
        raise ConfigError("the backbone checkpoint does not fit its own config; it may be corrupted")


@dataclass
class Backbone:
    arch: str  # bert | gpt | lstm | gru
    config: (
        dict  # the backbone's config fields ({} for a from-scratch recurrent one: the task model fills them)
    )
    tokenizer: Tokenizer
    state: dict | None  # pretrained weights, None from scratch
    longest: int  # the longest input it allows


def backbone(model: str, texts: list[str]) -> Backbone:
    """A bert/gpt checkpoint's backbone, or (`lstm` / `gru` / `cnn`) a from-scratch one with a word (or, for
    Chinese, character) tokenizer trained on `texts`."""
    if model in SCRATCH_CLASSIFIERS:
        kind = "char" if looks_chinese(texts) else "word"
        tokenizer = Tokenizer.train(kind, texts, vocab_size=20000 if kind == "word" else None)
        return Backbone(model, {}, tokenizer, None, 10**6)
    if not Path(model).exists():
        raise ConfigError(
            f"--model {model!r} is neither a checkpoint nor one of {', '.join(SCRATCH_CLASSIFIERS)} (from scratch)"
        )
    pretrained, tokenizer, config = load_checkpoint(model)
    arch = config["arch"]
    if arch not in ("bert", "gpt"):
        raise ConfigError(
            f"{model} is a {arch} checkpoint; task models sit on bert or gpt checkpoints (or lstm/gru)"
        )
    return Backbone(
        arch,
        dataclasses.asdict(pretrained.config),
        tokenizer,
        pretrained.state_dict(),
        pretrained.config.block_size,
    )


def lora_options(lora: dict | None) -> str:
    return f"--lora (r {lora['r']}, alpha {lora['alpha']})" if lora else "without --lora"


def resume_check(
    cfg: RunConfig, info: dict, tokenizer: Tokenizer, objective, run_dir: str | Path
) -> Callable[[dict, dict], None]:
    """The RunSpec.check_resume of a fine-tune, which is resumed by repeating its command plus --resume: the rebuilt
    run must have the checkpoint's task, shapes, tokenizer and data, or loading it would crash on a tensor shape (or
    worse, fit and silently continue another run)."""

    def check(saved_config: dict, state: dict) -> None:
        saved_data = saved_config.get("data", {})
        task, saved_task = info["task"], saved_data.get("task")
        if saved_task != task:
            raise CheckpointError(
                f"{run_dir} holds a {saved_task} fine-tune, not {task}; resume it with --task {saved_task}"
            )
        lora, saved_lora = info.get("lora"), saved_data.get("lora")
        if lora != saved_lora:
            raise CheckpointError(
                f"{run_dir} was trained {lora_options(saved_lora)}, this command asks for "
                f"{lora_options(lora)}; resume with the options the run started with"
            )
        now, saved = json.loads(json.dumps(cfg.to_dict()["model"])), saved_config.get("model", {})
        if now.get("labels") != saved.get("labels"):
            raise CheckpointError(
                f"the training data's labels ({', '.join(now.get('labels') or [])}) differ from "
                f"those of the run being resumed ({', '.join(saved.get('labels') or [])})"
            )
        differ = sorted(
            k for k in now.keys() | saved.keys() if now.get(k) != saved.get(k) and k not in EXECUTION_KEYS
        )
        if saved_config.get("arch") != cfg.arch or differ:
            raise CheckpointError(
                f"the model differs from the run being resumed ({', '.join(differ) or 'arch'}); "
                "resume with the command the run started with"
            )
        if saved_config.get("tokenizer", {}).get("sha256") != tokenizer.sha256():
            raise CheckpointError(
                "the tokenizer differs from the run being resumed; resume with its --model and data"
            )
        perm = state.get("objective", {}).get("perm")
        if perm is not None and len(perm) != objective.n_examples:
            raise CheckpointError(
                f"the training data has {objective.n_examples:,} examples, the run being "
                f"resumed {len(perm):,}; resume with its --train file and --max-examples"
            )

    return check


def finetune_spec(cfg: RunConfig, run_dir: str | Path, info: dict, **fields) -> RunSpec:
    """A fine-tune's RunSpec: `fields` as given, plus what every fine-tune shares (it is resumed by repeating its
    command plus --resume, checked against the checkpoint by resume_check)."""
    check = resume_check(cfg, info, fields["tokenizer"], fields["objective"], run_dir)
    fields["data_card"] = [*fields.get("data_card", []), *augment_card(info)]
    return RunSpec(data_info=info, resume_hint=RESUME_HINT, check_resume=check, **fields)
