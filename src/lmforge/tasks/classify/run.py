"""Fine-tuning for text classification and NLI: a pretrained backbone (or a recurrent one from scratch) plus a
label head, trained by the one training loop with this task's objective and validation.

    finetune_classifier("classify", model="minilm-ckpt", train="train.tsv", out="run", dev="dev.tsv",
                        fields=Fields(text="sentence", label="label"), options=FineTuneOptions(epochs=3))

The best checkpoint is chosen by the dev set's macro-F1 (early stopping with `patience`); `folds=k` runs k-fold
cross-validation on the training file instead and reports the mean and spread of the fold scores. LoRA trains
rank-r adapters of the backbone's attention projections and the head; checkpoints hold the merged weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmforge import checkpoint as ckpt
from lmforge.data.stemming import stem_text
from lmforge.errors import CheckpointError, ConfigError
from lmforge.eval.classification import classification_metrics
from lmforge.extras import require
from lmforge.models.classifier import ClassifierConfig
from lmforge.models.modes import eval_mode
from lmforge.models.registry import build_model
from lmforge.tasks.classify.classic import (
    ClassicOptions,
    WordVectors,
    check_dim,
    init_embeddings,
    word_vectors_for,
)
from lmforge.tasks.classify.encoding import TextEncoder, text_encoder
from lmforge.tasks.classify.examples import Example, Fields, check_labels, label_set, read_examples
from lmforge.tasks.common import (
    SCRATCH_CLASSIFIERS,
    FineTuneOptions,
    augment_info,
    augmented,
    backbone,
    finetune_config,
    finetune_spec,
    load_backbone,
)
from lmforge.train.lora import adapter_state, apply_lora, load_adapted, merge_lora
from lmforge.train.objectives import ShuffledEpochs
from lmforge.train.privacy import DPSGD, DPOptions
from lmforge.train.trainer import RunResult, RunSpec, Trainer, WeightsIO


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

    def __init__(
        self,
        rows,
        targets: torch.Tensor,
        encoder: TextEncoder,
        batch_size: int,
        class_weights=None,
        group_by_length: bool = False,
    ):
        super().__init__(
            len(rows), batch_size, lengths=[len(r[0]) for r in rows] if group_by_length else None
        )
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
        return F.binary_cross_entropy_with_logits(
            logits.float(), y, pos_weight=weights, reduction="none"
        ).mean(-1)
    return F.cross_entropy(logits.float(), y, weight=weights, reduction="none")


@torch.no_grad()
def predict_logits(model, encoder: TextEncoder, rows, device, batch_size: int = 64) -> torch.Tensor:
    """Label logits (N, labels) for encoded rows; rows of similar length are batched together to pad less."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    out = torch.zeros((len(rows), len(model.config.labels)))
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = model(*encoder.batch([rows[i] for i in chunk], device)).float().cpu()
    return out


def probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    return logits.sigmoid() if multi_label else logits.softmax(-1)


def score_examples(
    model, encoder: TextEncoder, examples: list[Example], device, batch_size: int = 64, rows=None
) -> dict:
    """Loss and classification metrics of a classifier on labelled examples (`rows`: the examples already
    encoded, e.g. a dev set scored at every validation)."""
    cfg = model.config
    rows = rows if rows is not None else [encoder(ex.text, ex.pair) for ex in examples]
    logits = predict_logits(model, encoder, rows, device, batch_size)
    y = targets_of(examples, cfg.labels, cfg.multi_label)
    probs = probabilities(logits, cfg.multi_label).numpy()
    loss = float(example_losses(logits, y).mean())
    return {"loss": loss, **classification_metrics(y.numpy(), probs, list(cfg.labels), cfg.multi_label)}


def class_weights_of(targets: torch.Tensor, n_labels: int, multi_label: bool) -> torch.Tensor:
    """Inverse frequency, so that every class weighs the same in the loss (BCE's pos_weight for multi-label:
    negatives over positives per label)."""
    counts = targets.sum(0) if multi_label else torch.bincount(targets, minlength=n_labels).float()
    if multi_label:
        return ((len(targets) - counts) / counts.clamp(min=1)).float()
    return (len(targets) / (n_labels * counts.clamp(min=1))).float()


def lora_weights(lora: dict) -> WeightsIO:
    """Checkpoints of a LoRA run hold merged weights (an ordinary classifier that loads, predicts and exports like a
    full fine-tune); its train state also keeps the adapters, so that the run resumes exactly."""

    def restore(model, path: Path, state: dict) -> None:
        if "lora" not in state:
            raise CheckpointError(
                f"{path} keeps no LoRA adapters, so this LoRA run cannot be resumed from it"
            )
        merged, _, _ = ckpt.load_checkpoint(path)
        load_adapted(model, merged.state_dict(), state["lora"])

    return WeightsIO(
        to_save=merge_lora, extra_state=lambda model: {"lora": adapter_state(model)}, restore=restore
    )


def classify_spec(
    cfg,
    run_dir,
    tokenizer,
    train: list[Example],
    dev: list[Example] | None,
    backbone_state: dict | None,
    info: dict,
    class_weights: bool = False,
    vectors: WordVectors | None = None,
) -> RunSpec:
    """The run specification of a classifier fine-tune (`info` is its data card: task, files, options);
    `vectors` start (and optionally freeze) the embedding layer of a from-scratch model."""
    m = cfg.model
    m.vocab_size = tokenizer.vocab_size
    encoder = text_encoder(tokenizer, m)
    rows = [encoder(ex.text, ex.pair) for ex in train]
    dev_rows = [encoder(ex.text, ex.pair) for ex in dev or []]  # encoded once, scored at every validation
    targets = targets_of(train, m.labels, m.multi_label)
    weights = class_weights_of(targets, len(m.labels), m.multi_label) if class_weights else None
    objective = ClassifyObjective(
        rows, targets, encoder, cfg.train.batch_size, weights, cfg.train.group_by_length
    )
    lora = info.get("lora")  # {"r", "alpha"} or None for full fine-tuning
    dp = DPOptions.from_config(cfg)  # DP-SGD (--dp-epsilon): Poisson batches, clipped and noised gradients
    hook = DPSGD(dp, len(rows), cfg, objective) if dp is not None else None
    # Per-example gradients need every activation's batch dimension, which unpadding removes.
    if dp is not None:
        m.unpad = False

    def build():
        model = build_model(cfg.arch, m)
        load_backbone(model, backbone_state)
        if vectors is not None:
            init_embeddings(model, vectors)
        if lora:
            apply_lora(model.backbone, r=lora["r"], alpha=lora["alpha"])
        return model

    def validate(model, device, amp_dtype):
        return score_examples(model, encoder, dev, device, rows=dev_rows) if dev else None

    card = [
        f"- task: {info['task']}; labels: {', '.join(m.labels)}",
        f"- training file: `{info['train']}` ({len(train):,} examples)",
    ]
    if dev:
        card.append(f"- dev file: `{info['dev']}` ({len(dev):,} examples)")
    return finetune_spec(
        cfg,
        run_dir,
        info,
        tokenizer=tokenizer,
        objective=objective,
        build_model=build,
        validate=validate,
        selection=("val_macro_f1", "max"),
        data_size=f"{len(rows):,} training examples",
        data_card=card,
        usage="predict {run} --input texts.txt",
        weights=lora_weights(lora) if lora else WeightsIO(),
        hook=hook,
    )


def finetune_classifier(
    task: str,
    model: str,
    train: str | os.PathLike,
    out: str | os.PathLike,
    dev: str | os.PathLike | None = None,
    fields: Fields | None = None,
    options: FineTuneOptions | None = None,
    max_examples: int | None = None,
    max_length: int = 128,
    multi_label: bool = False,
    class_weights: bool = False,
    lora: dict | None = None,
    folds: int | None = None,
    resume: bool = False,
    progress: bool = True,
    classic: ClassicOptions | None = None,
) -> RunResult | dict:
    """Fine-tune a classifier (`task` classify or nli) on a labelled CSV/TSV/JSONL file; returns the run's result or,
    with `folds`, the cross-validation summary. `lora` is {"r", "alpha"} for LoRA, None for a full fine-tune;
    `classic` holds word vectors for the embeddings and stemming (tasks/classify/classic.py)."""
    fields, options, classic = fields or Fields(), options or FineTuneOptions(), classic or ClassicOptions()
    classic.validate(model)
    if not options.epochs > 0 or (options.batch_size or 1) < 1 or max_length < 4:
        raise ConfigError("--epochs must be positive, --batch-size at least 1 and --max-length at least 4")
    if lora and model in SCRATCH_CLASSIFIERS:
        raise ConfigError("LoRA adapts a pretrained backbone; a from-scratch lstm/gru/cnn trains fully")
    if task == "nli" and fields.pair is None:
        raise ConfigError("NLI classifies text pairs: give --text-pair-field (e.g. the hypothesis column)")
    train_examples = read_examples(train, fields, max_examples=max_examples)
    dev_examples = read_examples(dev, fields) if dev else None
    if any(len(ex.labels) != 1 for ex in train_examples) and not multi_label:
        raise ConfigError("some examples have several labels; pass --multi-label")
    run = dict(
        task=task,
        model=model,
        fields=fields,
        options=options,
        max_length=max_length,
        multi_label=multi_label,
        class_weights=class_weights,
        progress=progress,
        classic=classic,
    )
    if folds is not None:
        return cross_validate(train_examples, Path(out), folds, source=str(train), lora=lora, **run)
    files = {"train": str(train), "dev": str(dev) if dev else None, "lora": lora}
    return run_classifier(train_examples, dev_examples, Path(out), files, resume=resume, **run)


def run_classifier(
    train_examples: list[Example],
    dev_examples: list[Example] | None,
    out: Path,
    files: dict,
    *,
    task: str,
    model: str,
    fields: Fields,
    options: FineTuneOptions,
    max_length: int,
    multi_label: bool,
    class_weights: bool,
    progress: bool,
    resume: bool = False,
    classic: ClassicOptions | None = None,
) -> RunResult:
    """One classifier run on examples already read (a fine-tune, or one fold of a cross-validation)."""
    read = len(train_examples)
    train_examples = augmented(
        train_examples, options.augment
    )  # --augment: the training split (or folds) only
    classic = classic or ClassicOptions()
    resume_from = ckpt.resume_point(out, resume)
    labels = label_set(train_examples)
    if dev_examples:
        check_labels(dev_examples, labels, files["dev"])
    texts = [t for ex in train_examples for t in (ex.text, ex.pair) if t]
    if classic.stem:  # the word vocabulary is one of stems (the model's TextEncoder stems what it reads)
        texts = [stem_text(t, classic.stem) for t in texts]
    base = backbone(model, texts)
    scratch = base.state is None
    # From scratch and LoRA adapters take larger steps than a full fine-tune of pretrained weights.
    lr = options.lr or (1e-3 if scratch else 5e-4 if files.get("lora") else 5e-5)
    model_cfg = ClassifierConfig(
        backbone=base.arch,
        encoder=base.config,
        labels=labels,
        multi_label=multi_label,
        block_size=min(max_length, base.longest),
        stem=classic.stem,
        dropout=0.5 if base.arch == "cnn" else ClassifierConfig.dropout,  # Kim 2014's dropout
    )
    cfg = finetune_config("classifier", model_cfg, len(train_examples), options, lr, warmup=not scratch)
    info = {"task": task, **files, "fields": dataclasses.asdict(fields), "backbone": model}
    info.update(augment_info(options.augment, read, len(train_examples)))
    vectors = None
    if classic.vectors:
        vectors = word_vectors_for(base.tokenizer, classic.vectors, classic.freeze_vectors)
        check_dim(cfg.model.encoder, vectors, classic.vectors)
        if progress:
            print(f"word vectors: {vectors.coverage()}{' (frozen)' if vectors.freeze else ''}")
        info["vectors"] = {"file": classic.vectors, "frozen": classic.freeze_vectors}
    spec = classify_spec(
        cfg, out, base.tokenizer, train_examples, dev_examples, base.state, info, class_weights, vectors
    )
    options.attach(spec)  # a caller's hooks (lmforge tune's pruning and Ctrl-C hint)
    return Trainer(cfg, spec, out, progress=progress, resume_from=resume_from).run()


def cross_validate(
    examples: list[Example], out: Path, folds: int, source: str = "", lora: dict | None = None, **run
) -> dict:
    """k-fold cross-validation: k runs, each validated on the fold it did not train on (stratified by label)."""
    model_selection = require("sklearn.model_selection", extra="tasks", feature="cross-validation (--folds)")
    if folds < 2 or folds > len(examples):
        raise ConfigError(
            f"--folds must be between 2 and the number of examples ({len(examples)}), got {folds}"
        )
    ckpt.require_new_run_dir(
        out
    )  # a new folder, or one a failed cross-validation left (its folds check theirs)
    single = [ex.labels[0] if len(ex.labels) == 1 else "|".join(ex.labels) for ex in examples]
    counts = {label: single.count(label) for label in set(single)}
    splitter_cls = model_selection.StratifiedKFold if min(counts.values()) >= folds else model_selection.KFold
    splitter = splitter_cls(folds, shuffle=True, random_state=run["options"].seed)
    scores = []
    for k, (train_idx, val_idx) in enumerate(splitter.split(np.zeros(len(examples)), single)):
        files = {"train": f"{source} (fold {k} of {folds})", "dev": None, "lora": lora}
        result = run_classifier(
            [examples[i] for i in train_idx], [examples[i] for i in val_idx], out / f"fold-{k}", files, **run
        )
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
