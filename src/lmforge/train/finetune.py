"""Fine-tuning for text classification and NLI: a pretrained backbone (or a recurrent one from scratch) plus a
label head, trained by the one training loop (trainer.Trainer) with the objective and validation of this task.

    finetune("classify", model="minilm-ckpt", train="train.tsv", dev="dev.tsv", out="run",
             fields=Fields(text="sentence", label="label"), epochs=3)

The best checkpoint is chosen by the dev set's macro-F1 (early stopping with `patience`); `folds=k` runs k-fold
cross-validation on the training file instead and reports the mean and spread of the fold scores.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.config import OptimConfig, RunConfig, TrainConfig, parse_overrides, set_dotted
from lmforge.errors import CheckpointError, ConfigError
from lmforge.eval.classification import classification_metrics
from lmforge.models.classifier import ClassifierConfig
from lmforge.models.registry import build_model
from lmforge.tasks.encoding import TextEncoder
from lmforge.tasks.examples import Example, Fields, check_labels, label_set, read_examples
from lmforge.tokenizers import Tokenizer
from lmforge.train.objectives import ShuffledEpochs
from lmforge.train.trainer import RunResult, Trainer

TASKS = ("classify", "nli", "ner", "qa", "translate", "summarize", "chat")
SCRATCH = ("lstm", "gru")  # backbones trained from scratch, with a tokenizer made from the training texts


def targets_of(examples: list[Example], labels: list[str], multi_label: bool) -> torch.Tensor:
    index = {name: i for i, name in enumerate(labels)}
    if multi_label:
        out = torch.zeros(len(examples), len(labels))
        for row, ex in enumerate(examples):
            out[row, [index[name] for name in ex.labels]] = 1.0
        return out
    return torch.tensor([index[ex.labels[0]] for ex in examples], dtype=torch.long)


class ClassifyObjective(ShuffledEpochs):
    """Shuffled epochs over the encoded training examples; cross-entropy (softmax) or per-label binary
    cross-entropy (multi-label), optionally weighted against class imbalance."""

    name = "classify"

    def __init__(self, rows, targets: torch.Tensor, encoder: TextEncoder, batch_size: int, class_weights=None,
                 group_by_length: bool = False):
        super().__init__(len(rows), batch_size, lengths=[len(r[0]) for r in rows] if group_by_length else None)
        self.rows, self.targets, self.encoder, self.class_weights = rows, targets, encoder, class_weights

    def next_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        chosen = self.next_indices(generator)
        return (*self.encoder.batch([self.rows[i] for i in chosen]), self.targets[chosen])

    @staticmethod
    def count_targets(batch) -> torch.Tensor:
        return torch.tensor(batch[0].shape[0], device=batch[0].device)

    def loss_sum(self, model, batch) -> torch.Tensor:
        ids, mask, types, y = batch
        return example_losses(model(ids, mask, types), y, self.class_weights).sum()


def example_losses(logits: torch.Tensor, y: torch.Tensor, class_weights=None) -> torch.Tensor:
    """One loss per example: cross-entropy for one label, the mean binary cross-entropy over labels for several."""
    weights = None if class_weights is None else class_weights.to(logits.device)
    if y.dtype.is_floating_point:
        return F.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=weights, reduction="none").mean(-1)
    return F.cross_entropy(logits.float(), y, weight=weights, reduction="none")


@torch.no_grad()
def predict_logits(model, encoder: TextEncoder, rows, device, batch_size: int = 64) -> torch.Tensor:
    """Label logits (N, labels) for encoded rows; rows of similar length are batched together to pad less."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    out = torch.zeros((len(rows), len(model.config.labels)))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        out[chunk] = model(*encoder.batch([rows[i] for i in chunk], device)).float().cpu()
    model.train(was_training)
    return out


def probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    return logits.sigmoid() if multi_label else logits.softmax(-1)


def score_examples(model, encoder: TextEncoder, examples: list[Example], device, batch_size: int = 64) -> dict:
    """Loss and classification metrics of a classifier on labelled examples."""
    cfg = model.config
    logits = predict_logits(model, encoder, [encoder(ex.text, ex.pair) for ex in examples], device, batch_size)
    y = targets_of(examples, cfg.labels, cfg.multi_label)
    probs = probabilities(logits, cfg.multi_label).numpy()
    loss = float(example_losses(logits, y).mean())
    return {"loss": loss, **classification_metrics(y.numpy(), probs, list(cfg.labels), cfg.multi_label)}


class TaskTrainer(Trainer):
    """What every fine-tune (`self.info` is its data card: task, files, options) shares: it is resumed by repeating
    its command plus --resume, which rebuilds the run from the command and then restores the checkpoint's state."""

    resume_hint = "continue with the same `lmforge finetune` command plus --resume"

    def _check_resume(self, saved_config: dict, state: dict) -> None:
        # The rebuilt run must have the checkpoint's shapes and data, or loading it would crash on a tensor shape
        # (or worse, fit and silently continue another run).
        saved_data = saved_config.get("data", {})
        task, saved_task = self.info["task"], saved_data.get("task")
        if saved_task != task:
            raise CheckpointError(f"{self.run_dir} holds a {saved_task} fine-tune, not {task}; resume it with "
                                  f"--task {saved_task}")
        lora, saved_lora = self.info.get("lora"), saved_data.get("lora")
        if lora != saved_lora:
            raise CheckpointError(f"{self.run_dir} was trained {_lora_options(saved_lora)}, this command asks for "
                                  f"{_lora_options(lora)}; resume with the options the run started with")
        now, saved = json.loads(json.dumps(self.cfg.to_dict()["model"])), saved_config.get("model", {})
        if now.get("labels") != saved.get("labels"):
            raise CheckpointError(f"the training data's labels ({', '.join(now.get('labels') or [])}) differ from "
                                  f"those of the run being resumed ({', '.join(saved.get('labels') or [])})")
        differ = sorted(k for k in now.keys() | saved.keys() if now.get(k) != saved.get(k))
        if saved_config.get("arch") != self.cfg.arch or differ:
            raise CheckpointError(f"the model differs from the run being resumed ({', '.join(differ) or 'arch'}); "
                                  "resume with the command the run started with")
        if saved_config.get("tokenizer", {}).get("sha256") != self.tokenizer.sha256():
            raise CheckpointError("the tokenizer differs from the run being resumed; resume with its --model and data")
        perm = state.get("objective", {}).get("perm")
        if perm is not None and len(perm) != self.objective.n_examples:
            raise CheckpointError(f"the training data has {self.objective.n_examples:,} examples, the run being "
                                  f"resumed {len(perm):,}; resume with its --train file and --max-examples")


def _lora_options(lora: dict | None) -> str:
    return f"--lora (r {lora['r']}, alpha {lora['alpha']})" if lora else "without --lora"


class FineTuner(TaskTrainer):
    """The training loop with a labelled training file instead of token shards, and dev-set metrics."""

    selection = ("val_macro_f1", "max")
    usage = "predict {run} --input texts.txt"

    def __init__(self, cfg: RunConfig, run_dir, tokenizer: Tokenizer, train: list[Example], dev: list[Example] | None,
                 backbone_state: dict | None, info: dict, class_weights: bool = False, progress: bool = True,
                 resume_from: Path | None = None):
        self.task_tokenizer, self.train_examples, self.dev_examples = tokenizer, train, dev
        self.backbone_state, self.info, self.use_class_weights = backbone_state, info, class_weights
        self.lora = info.get("lora")  # {"r", "alpha"} or None for full fine-tuning
        super().__init__(cfg, info["train"], run_dir, progress=progress, resume_from=resume_from)

    def _setup_data(self) -> None:
        m = self.cfg.model
        self.tokenizer = self.task_tokenizer
        m.vocab_size = self.tokenizer.vocab_size
        self.encoder = TextEncoder(self.tokenizer, m.backbone, m.block_size)
        rows = [self.encoder(ex.text, ex.pair) for ex in self.train_examples]
        targets = targets_of(self.train_examples, m.labels, m.multi_label)
        weights = None
        if self.use_class_weights:  # inverse frequency, so that every class weighs the same in the loss
            counts = targets.sum(0) if m.multi_label else torch.bincount(targets, minlength=len(m.labels)).float()
            weights = (len(targets) / (len(m.labels) * counts.clamp(min=1))).float()
            if m.multi_label:  # BCE's pos_weight: negatives over positives per label
                weights = ((len(targets) - counts) / counts.clamp(min=1)).float()
        self.objective = ClassifyObjective(rows, targets, self.encoder, self.cfg.train.batch_size, weights,
                                           self.cfg.train.group_by_length)
        self.data_size = f"{len(rows):,} training examples"
        self.data_info = self.info

    def _build_model(self) -> torch.nn.Module:
        model = build_model(self.cfg.arch, self.cfg.model)
        load_backbone(model, self.backbone_state)
        if self.lora:
            from lmforge.train.lora import apply_lora

            apply_lora(model.backbone, r=self.lora["r"], alpha=self.lora["alpha"])
        return model

    def _model_to_save(self) -> torch.nn.Module:
        if not self.lora:
            return self.model
        from lmforge.train.lora import merge_lora

        return merge_lora(self.model)  # an ordinary classifier: loads, predicts and exports like a full fine-tune

    # The saved weights are merged, so a LoRA run also keeps its adapters in the train state (lora.load_adapted).
    def _train_state(self) -> dict:
        from lmforge.train.lora import adapter_state

        return {**super()._train_state(), **({"lora": adapter_state(self.model)} if self.lora else {})}

    def _load_weights(self, path: Path, state: dict) -> None:
        if not self.lora:
            return super()._load_weights(path, state)
        from lmforge.train.checkpoint import load_checkpoint
        from lmforge.train.lora import load_adapted

        if "lora" not in state:
            raise CheckpointError(f"{path} keeps no LoRA adapters, so this LoRA run cannot be resumed from it")
        merged, _, _ = load_checkpoint(path)
        load_adapted(self.model, merged.state_dict(), state["lora"])

    def _validate(self) -> dict | None:
        if not self.dev_examples:
            return None
        return score_examples(self.model, self.encoder, self.dev_examples, self.device)

    def _data_card(self) -> list[str]:
        lines = [f"- task: {self.info['task']}; labels: {', '.join(self.cfg.model.labels)}",
                 f"- training file: `{self.info['train']}` ({len(self.train_examples):,} examples)"]
        if self.dev_examples:
            lines.append(f"- dev file: `{self.info['dev']}` ({len(self.dev_examples):,} examples)")
        return lines


def load_backbone(model: torch.nn.Module, state: dict | None) -> None:
    """Put a pretrained backbone's weights into a task model (its head stays freshly initialised)."""
    if state is None:
        return
    missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:  # an LM head the checkpoint ties need not be saved
        raise ConfigError("the backbone checkpoint does not fit its own config; it may be corrupted")


def _looks_chinese(examples: list[Example]) -> bool:
    sample = "".join(ex.text for ex in examples[:500])
    cjk = sum("\u4e00" <= ch <= "\u9fff" for ch in sample)
    return cjk > 0.3 * max(1, len(sample.replace(" ", "")))


def _backbone(model: str, train: list[Example]) -> tuple[str, dict, Tokenizer, dict | None, int]:
    """(backbone arch, its config, tokenizer, pretrained weights or None, longest input it allows)."""
    from lmforge.train.checkpoint import load_checkpoint

    if model in SCRATCH:
        texts = [t for ex in train for t in (ex.text, ex.pair) if t]
        # Chinese has no spaces between words: characters are the units of a from-scratch model.
        kind = "char" if _looks_chinese(train) else "word"
        return model, {}, Tokenizer.train(kind, texts, vocab_size=20000 if kind == "word" else None), None, 10**6
    if not Path(model).exists():
        raise ConfigError(f"--model {model!r} is neither a checkpoint nor one of {', '.join(SCRATCH)} (from scratch)")
    backbone, tokenizer, config = load_checkpoint(model)
    arch = config["arch"]
    if arch not in ("bert", "gpt"):
        raise ConfigError(f"{model} is a {arch} checkpoint; classifiers sit on bert or gpt checkpoints (or lstm/gru)")
    return arch, dataclasses.asdict(backbone.config), tokenizer, backbone.state_dict(), backbone.config.block_size


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
) -> RunResult | dict:
    """Fine-tune a classifier (or, with task "ner" / "qa", a tagger / an extractive QA model; with "translate" /
    "summarize", a model on source/target pairs, `source_field` and `target_field` (or parallel files
    TRAIN.`source_lang` and TRAIN.`target_lang`): an encoder-decoder, or a
    decoder-only GPT checkpoint trained on "source separator target" sequences with the loss on the target only,
    tasks/pair_prompts.py; with "chat", a GPT on conversations); returns the run's result (or, with `folds`, the
    cross-validation summary).

    lora=True trains rank-`lora_r` adapters of the backbone's attention projections and the head only (the saved
    checkpoints have the adapters merged in). `max_length` defaults to 128 tokens (384 for qa); translate,
    summarize and chat use the model's own context instead and refuse it. resume=True continues the run in `out`
    from its latest checkpoint, exactly; give the arguments the run started with."""
    if task not in TASKS:
        raise ConfigError(f"--task {task!r} is not supported here; choose one of {', '.join(TASKS)}")
    if task not in ("classify", "nli") and (folds or multi_label or class_weights or lora):
        raise ConfigError(f"--folds, --multi-label, --class-weights and --lora are for classification, not {task}")
    if (source_lang or target_lang) and task not in ("translate", "summarize"):
        raise ConfigError(f"--source-lang and --target-lang are for translate and summarize, not {task}")
    if task in ("translate", "summarize", "chat") and max_length is not None:
        raise ConfigError(f"--max-length does not apply to {task}: the model's own context is the limit")
    if resume and folds is not None:
        raise ConfigError("--resume continues one run; cross-validation (--folds) starts its folds afresh")
    max_length = max_length or (384 if task == "qa" else 128)
    if task in ("translate", "summarize"):  # an encoder-decoder on paired text: train/finetune_seq2seq.py
        from lmforge.train.finetune_seq2seq import finetune_seq2seq

        return finetune_seq2seq(task, model, train, out, dev=dev, source_field=source_field,
                                target_field=target_field, source_lang=source_lang, target_lang=target_lang,
                                epochs=epochs, max_examples=max_examples,
                                batch_size=batch_size, lr=lr, patience=patience, max_minutes=max_minutes, seed=seed,
                                overrides=overrides, progress=progress, resume=resume)
    if task == "chat":  # multi-turn conversations for a GPT: train/finetune_chat.py
        from lmforge.train.finetune_chat import finetune_chat

        return finetune_chat(model, train, out, dev=dev, epochs=epochs, max_examples=max_examples,
                             batch_size=batch_size, lr=lr, patience=patience, max_minutes=max_minutes, seed=seed,
                             overrides=overrides, progress=progress, resume=resume)
    if task == "qa":  # SQuAD-format files: its own module (train/finetune_qa.py)
        from lmforge.train.finetune_qa import finetune_qa

        return finetune_qa(model, train, out, dev=dev, epochs=epochs, max_examples=max_examples,
                           max_length=max_length, doc_stride=doc_stride, batch_size=batch_size, lr=lr or 5e-5,
                           patience=patience, max_minutes=max_minutes, seed=seed, overrides=overrides,
                           progress=progress, resume=resume)
    if task == "ner":  # a tagger on CoNLL files: its own module (train/finetune_ner.py)
        from lmforge.train.finetune_ner import finetune_ner

        return finetune_ner(model, train, out, dev=dev, epochs=epochs, max_examples=max_examples,
                            max_length=max_length, batch_size=batch_size, lr=lr, patience=patience,
                            max_minutes=max_minutes, seed=seed, overrides=overrides, progress=progress,
                            resume=resume)
    fields = fields or Fields()
    lora_cfg = {"r": lora_r, "alpha": lora_alpha} if lora else None
    if lora and model in SCRATCH:
        raise ConfigError("LoRA adapts a pretrained backbone; a from-scratch lstm/gru trains fully")
    if task == "nli" and fields.pair is None:
        raise ConfigError("NLI classifies text pairs: give --text-pair-field (e.g. the hypothesis column)")
    train_examples = read_examples(train, fields, max_examples=max_examples)
    dev_examples = read_examples(dev, fields) if dev else None
    if any(len(ex.labels) != 1 for ex in train_examples) and not multi_label:
        raise ConfigError("some examples have several labels; pass --multi-label")
    if folds is not None:
        return cross_validate(task, model, train_examples, Path(out), fields, folds, seed, progress=progress,
                              epochs=epochs, max_length=max_length, batch_size=batch_size, lr=lr,
                              multi_label=multi_label, class_weights=class_weights, patience=patience,
                              max_minutes=max_minutes, overrides=overrides, source=str(train), lora=lora_cfg)
    return _run(task, model, train_examples, dev_examples, Path(out), fields, epochs, max_length, batch_size, lr,
                multi_label, class_weights, patience, max_minutes, seed, overrides, progress,
                {"train": str(train), "dev": str(dev) if dev else None, "lora": lora_cfg}, resume=resume)


def _run(task, model, train_examples, dev_examples, out: Path, fields, epochs, max_length, batch_size, lr,
         multi_label, class_weights, patience, max_minutes, seed, overrides, progress, files,
         resume: bool = False) -> RunResult:
    from lmforge.train import checkpoint as ckpt

    resume_from = ckpt.resume_point(out, resume)
    labels = label_set(train_examples)
    if dev_examples:
        check_labels(dev_examples, labels, files["dev"])
    arch, encoder_cfg, tokenizer, state, longest = _backbone(model, train_examples)
    scratch = state is None
    if epochs <= 0 or batch_size < 1 or max_length < 4:
        raise ConfigError("--epochs must be positive, --batch-size at least 1 and --max-length at least 4")
    steps_per_epoch = math.ceil(len(train_examples) / batch_size)
    steps = max(1, math.ceil(epochs * steps_per_epoch))
    cfg = RunConfig(
        arch="classifier",
        model=ClassifierConfig(backbone=arch, encoder=encoder_cfg, labels=labels, multi_label=multi_label,
                               block_size=min(max_length, longest)),
        # From scratch and LoRA adapters take larger steps than a full fine-tune of pretrained weights.
        optim=OptimConfig(lr=lr or (1e-3 if scratch else 5e-4 if files.get("lora") else 5e-5), weight_decay=0.01,
                          beta2=0.999,
                          warmup_steps=0 if scratch else steps // 10, schedule="linear", min_lr_ratio=0.0),
        train=TrainConfig(batch_size=batch_size, max_steps=steps, eval_every=max(1, min(steps_per_epoch, steps)),
                          max_minutes=max_minutes, patience=patience, seed=seed, keep_last=1, tensorboard=False),
    )
    for key, value in parse_overrides(overrides).items():
        set_dotted(cfg, key, value)
    info = {"task": task, **files, "fields": dataclasses.asdict(fields), "backbone": model}
    tuner = FineTuner(cfg, out, tokenizer, train_examples, dev_examples, state, info, class_weights, progress,
                      resume_from)
    return tuner.run()


def cross_validate(task, model, examples: list[Example], out: Path, fields, folds: int, seed: int,
                   progress: bool = True, source: str = "", **kw) -> dict:
    """k-fold cross-validation: k runs, each validated on the fold it did not train on (stratified by label)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if folds < 2 or folds > len(examples):
        raise ConfigError(f"--folds must be between 2 and the number of examples ({len(examples)}), got {folds}")
    single = [ex.labels[0] if len(ex.labels) == 1 else "|".join(ex.labels) for ex in examples]
    counts = {label: single.count(label) for label in set(single)}
    splitter = (StratifiedKFold if min(counts.values()) >= folds else KFold)(folds, shuffle=True, random_state=seed)
    scores = []
    for k, (train_idx, val_idx) in enumerate(splitter.split(np.zeros(len(examples)), single)):
        result = _run(task, model, [examples[i] for i in train_idx], [examples[i] for i in val_idx],
                      out / f"fold-{k}", fields, kw["epochs"], kw["max_length"], kw["batch_size"], kw["lr"],
                      kw["multi_label"], kw["class_weights"], kw["patience"], kw["max_minutes"], seed,
                      kw["overrides"], progress,
                      {"train": f"{source} (fold {k} of {folds})", "dev": None, "lora": kw.get("lora")})
        scores.append(result.metrics)
    keys = [k for k in scores[0] if all(isinstance(s.get(k), (int, float)) for s in scores)]
    summary = {
        "folds": folds,
        "runs": [str(out / f"fold-{k}") for k in range(folds)],
        "per_fold": scores,
        "mean": {k: statistics.fmean(s[k] for s in scores) for k in keys},
        "std": {k: statistics.pstdev(s[k] for s in scores) for k in keys},
    }
    (out / "cv.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
