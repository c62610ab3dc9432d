"""`finetune(task, ...)`: the one entry point of every fine-tuning task, which hands its options to the task's own
module (tasks/classify, ner, qa, translate, chat). The CLI's `lmforge finetune` calls it."""

from __future__ import annotations

import os
from collections.abc import Callable

from lmforge.config import parse_overrides
from lmforge.data.augment import AugmentOptions
from lmforge.errors import ConfigError
from lmforge.tasks.chat.run import finetune_chat
from lmforge.tasks.classify.classic import ClassicOptions
from lmforge.tasks.classify.examples import Fields
from lmforge.tasks.classify.run import finetune_classifier
from lmforge.tasks.classify.tfidf import fit_tfidf
from lmforge.tasks.common import FineTuneOptions
from lmforge.tasks.lm.run import finetune_lm
from lmforge.tasks.ner.run import finetune_ner
from lmforge.tasks.qa.run import finetune_qa
from lmforge.tasks.translate.run import finetune_pairs
from lmforge.train.distributed import refuse_distributed
from lmforge.train.trainer import RunResult

TASKS = ("classify", "nli", "ner", "qa", "translate", "summarize", "chat", "lm")


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
    batch_size: int | None = None,
    lr: float | None = None,
    multi_label: bool = False,
    class_weights: bool = False,
    lora: bool = False,
    lora_r: int = 8,
    lora_alpha: float = 16.0,
    patience: int | None = None,
    folds: int | None = None,
    max_minutes: float | None = None,
    max_steps: int | None = None,
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
    resume_hint: str | None = None,
    augment: str | None = None,
    augment_n: int = 4,
    augment_alpha: float = 0.1,
    augment_model: str | None = None,
    classic: ClassicOptions | None = None,
) -> RunResult | dict:
    """Fine-tune a classifier (or, with task "ner" / "qa", a tagger / an extractive QA model; with "translate" /
    "summarize", a model on source/target pairs, `source_field` and `target_field` (or parallel files
    TRAIN.`source_lang` and TRAIN.`target_lang`): an encoder-decoder, or a decoder-only GPT checkpoint trained on
    "source separator target" sequences with the loss on the target only, tasks/translate/prompts.py; with "chat", a
    GPT on conversations; with "lm", any language-model checkpoint on raw text files, `train` one or a list, prepared
    with its tokenizer: continued pretraining, tasks/lm/run.py); returns the run's result (or, with `folds`, the
    cross-validation summary).

    lora=True trains rank-`lora_r` adapters of the backbone's attention projections and the head only (the saved
    checkpoints have the adapters merged in). `max_length` defaults to 128 tokens (384 for qa); translate,
    summarize and chat use the model's own context instead and refuse it. resume=True continues the run in `out`
    from its latest checkpoint, exactly; give the arguments the run started with.

    augment ("eda", "contextual", "backtranslate" or "noise"; classify, nli and ner) adds up to `augment_n` new
    examples per training example, made from the training split only (data/augment.py, seeded by `seed`);
    `augment_model` is eda's word-vectors file, contextual's masked-LM checkpoint or backtranslate's
    "SRC2PIVOT,PIVOT2SRC" checkpoints."""
    if task not in TASKS:
        raise ConfigError(f"--task {task!r} is not supported here; choose one of {', '.join(TASKS)}")
    if classic is not None and classic != ClassicOptions() and task not in ("classify", "nli"):
        raise ConfigError(f"--vectors, --stem and the tfidf options are for classify and nli, not {task}")
    if model in ("cnn", "tfidf") and task not in ("classify", "nli"):
        raise ConfigError(f"--model {model} is a text classifier (classify, nli), not a {task} model")
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
        if task not in ("classify", "nli", "lm", "chat"):
            raise ConfigError(f"--dp-epsilon (DP-SGD) is for classify, nli, lm and chat so far, not {task}")
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
        max_steps=max_steps,
        seed=seed,
        overrides=overrides,
        on_evaluate=on_evaluate,
        resume_hint=resume_hint,
        augment=augment_options(task, augment, augment_n, augment_alpha, augment_model, seed),
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
    if task == "lm":  # continued pretraining on raw text files (a list of them, or one)
        return finetune_lm(model, train, out, dev=dev, max_length=max_length, **common)
    if task == "chat":
        return finetune_chat(model, train, out, dev=dev, **common)
    if task == "qa":
        return finetune_qa(
            model, train, out, dev=dev, max_length=max_length or 384, doc_stride=doc_stride, **common
        )
    if task == "ner":
        return finetune_ner(model, train, out, dev=dev, max_length=max_length or 128, **common)
    if (
        model == "tfidf"
    ):  # fitted by scikit-learn in one pass (tasks/classify/tfidf.py), not by the training loop
        refuse_distributed("--model tfidf")
        if folds is not None or resume or lora or class_weights or dp_epsilon is not None:
            raise ConfigError(
                "--model tfidf is fitted in one pass: --folds, --resume, --lora, --class-weights and "
                "--dp-epsilon do not apply"
            )
        return fit_tfidf(
            task,
            train,
            out,
            dev=dev,
            fields=fields,
            classic=classic,
            max_examples=max_examples,
            multi_label=multi_label,
            progress=progress,
            augment=options.augment,
        )
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
        classic=classic,
        **common,
    )


def augment_options(
    task: str, method: str | None, n: int, alpha: float, resource: str | None, seed: int
) -> AugmentOptions | None:
    """The validated AugmentOptions of `finetune --augment` (None without it); `resource` is what the method
    needs: eda's vectors file, contextual's masked-LM checkpoint, backtranslate's two checkpoints "A,B"."""
    if method is None:
        if resource is not None:
            raise ConfigError("--augment-model belongs to --augment; give the method too")
        return None
    if task not in ("classify", "nli", "ner"):
        raise ConfigError(f"--augment is for classify, nli and ner, not {task}")
    via = tuple(v.strip() for v in resource.split(",")) if method == "backtranslate" and resource else None
    options = AugmentOptions(
        method=method,
        n=n,
        alpha=alpha,
        seed=seed,
        vectors=resource if method == "eda" else None,
        model=resource if method == "contextual" else None,
        via=via,
    )
    options.validate(tagged=task == "ner")  # contextual and backtranslate cannot keep NER tags aligned
    return options
