"""`finetune(task, ...)`: the one entry point of every fine-tuning task, which hands its options to the task's own
module (tasks/classify, ner, qa, translate, chat). The CLI's `lmforge finetune` calls it."""

from __future__ import annotations

import os
from collections.abc import Callable

from lmforge.config import parse_overrides
from lmforge.errors import ConfigError
from lmforge.tasks.chat.run import finetune_chat
from lmforge.tasks.classify.examples import Fields
from lmforge.tasks.classify.run import finetune_classifier
from lmforge.tasks.common import FineTuneOptions
from lmforge.tasks.ner.run import finetune_ner
from lmforge.tasks.qa.run import finetune_qa
from lmforge.tasks.translate.run import finetune_pairs
from lmforge.train.trainer import RunResult

TASKS = ("classify", "nli", "ner", "qa", "translate", "summarize", "chat")


def finetune(
    task: str,
    model: str,
    train: str | os.PathLike,
    out: str | os.PathLike,
    dev: str | os.PathLike | None = None,
    fields: Fields | None = None,
    epochs: float = 3,
    max_examples: int | None = None,
    max_length: int | None = None,
    batch_size: int = 32,
    lr: float | None = None,
    multi_label: bool = False,
    class_weights: bool = False,
    lora: bool = False,
    lora_r: int = 8,
    lora_alpha: float = 16.0,
    patience: int | None = None,
    folds: int | None = None,
    max_minutes: float | None = None,
    seed: int = 0,
    overrides: dict | list[str] | None = None,
    doc_stride: int = 128,
    progress: bool = True,
    source_field: str = "src",
    target_field: str = "tgt",
    source_lang: str | None = None,
    target_lang: str | None = None,
    resume: bool = False,
    dp_epsilon: float | None = None,
    dp_delta: float = 1e-5,
    dp_max_grad_norm: float = 1.0,
    on_evaluate: Callable[[int, dict], bool] | None = None,
) -> RunResult | dict:
    """Fine-tune a classifier (or, with task "ner" / "qa", a tagger / an extractive QA model; with "translate" /
    "summarize", a model on source/target pairs, `source_field` and `target_field` (or parallel files
    TRAIN.`source_lang` and TRAIN.`target_lang`): an encoder-decoder, or a decoder-only GPT checkpoint trained on
    "source separator target" sequences with the loss on the target only, tasks/translate/prompts.py; with "chat", a
    GPT on conversations); returns the run's result (or, with `folds`, the cross-validation summary).

    lora=True trains rank-`lora_r` adapters of the backbone's attention projections and the head only (the saved
    checkpoints have the adapters merged in). `max_length` defaults to 128 tokens (384 for qa); translate,
    summarize and chat use the model's own context instead and refuse it. resume=True continues the run in `out`
    from its latest checkpoint, exactly; give the arguments the run started with."""
    if task not in TASKS:
        raise ConfigError(f"--task {task!r} is not supported here; choose one of {', '.join(TASKS)}")
    if task not in ("classify", "nli") and (folds or multi_label or class_weights or lora):
        raise ConfigError(
            f"--folds, --multi-label, --class-weights and --lora are for classification, not {task}"
        )
    if (source_lang or target_lang) and task not in ("translate", "summarize"):
        raise ConfigError(f"--source-lang and --target-lang are for translate and summarize, not {task}")
    if task in ("translate", "summarize", "chat") and max_length is not None:
        raise ConfigError(f"--max-length does not apply to {task}: the model's own context is the limit")
    if (
        dp_epsilon is not None
    ):  # DP-SGD: the train.dp_* keys (train/privacy.py), before the command's own overrides
        if task not in ("classify", "nli"):
            raise ConfigError(f"--dp-epsilon (DP-SGD) is for classify and nli so far, not {task}")
        dp = {
            "train.dp_epsilon": dp_epsilon,
            "train.dp_delta": dp_delta,
            "train.dp_max_grad_norm": dp_max_grad_norm,
        }
        overrides = {**dp, **parse_overrides(overrides)}
    if resume and folds is not None:
        raise ConfigError("--resume continues one run; cross-validation (--folds) starts its folds afresh")
    options = FineTuneOptions(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        patience=patience,
        max_minutes=max_minutes,
        seed=seed,
        overrides=overrides,
        on_evaluate=on_evaluate,
    )
    common = dict(options=options, max_examples=max_examples, progress=progress, resume=resume)
    if task in ("translate", "summarize"):
        return finetune_pairs(
            task,
            model,
            train,
            out,
            dev=dev,
            source_field=source_field,
            target_field=target_field,
            source_lang=source_lang,
            target_lang=target_lang,
            **common,
        )
    if task == "chat":
        return finetune_chat(model, train, out, dev=dev, **common)
    if task == "qa":
        return finetune_qa(
            model, train, out, dev=dev, max_length=max_length or 384, doc_stride=doc_stride, **common
        )
    if task == "ner":
        return finetune_ner(model, train, out, dev=dev, max_length=max_length or 128, **common)
    return finetune_classifier(
        task,
        model,
        train,
        out,
        dev=dev,
        fields=fields,
        max_length=max_length or 128,
        multi_label=multi_label,
        class_weights=class_weights,
        lora={"r": lora_r, "alpha": lora_alpha} if lora else None,
        folds=folds,
        **common,
    )
