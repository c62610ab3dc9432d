"""Knowledge distillation of a fine-tuned classifier into a smaller one (Hinton et al., 2015).

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, gold label)

summed over the training examples (`distill.distill_loss_sum`, the language-model path's loss). The teacher is a
checkpoint of `lmforge finetune --task classify|nli`; the student is a classifier of the same labels on a backbone
built from a preset (a bert or gpt preset, reading the teacher's tokenizer) or a BiLSTM/BiGRU from scratch (`lstm`
/ `gru`, with the word tokenizer `finetune --model lstm` would make). The teacher is in eval mode, so its logits
are a function of the example alone: they are computed once, under no_grad and with the teacher's own input
layout, before training, rather than again on every batch of every epoch, and each batch of the student carries
the teacher logits of its own examples. Everything else (dev macro-F1 picks RUN/best, the checkpoint format,
`lmforge predict` / `evaluate` / `lmforge.load`) is the classification fine-tune's: the run is its run
specification (tasks/classify/run.py) with this objective swapped in.
"""

from __future__ import annotations

import dataclasses
import os
import time

import torch

from lmforge import checkpoint as ckpt
from lmforge.compress.distill import NO_RESUME, check_settings, distill_loss_sum, run_overrides
from lmforge.config import apply_section
from lmforge.errors import ConfigError
from lmforge.eval.classification import classification_metrics
from lmforge.models.classifier import ClassifierConfig, RNNEncoderConfig
from lmforge.models.registry import get_preset, model_config_class
from lmforge.tasks.classify.examples import Example, Fields, check_labels, read_examples
from lmforge.tasks.classify.pipeline import TextClassificationPipeline
from lmforge.tasks.classify.run import ClassifyObjective, classify_spec, predict_logits, targets_of
from lmforge.tasks.common import SCRATCH, FineTuneOptions, backbone, finetune_config
from lmforge.train.trainer import RunResult, Trainer

SPEED_EXAMPLES = 512  # examples timed for the examples/s of the report


class DistillClassify(ClassifyObjective):
    """Shuffled epochs of the training examples, scored against the teacher's logits as well as the gold labels."""

    name = "distill-classify"

    def __init__(
        self,
        rows,
        targets: torch.Tensor,
        encoder,
        batch_size: int,
        teacher_logits: torch.Tensor,
        temperature: float,
        alpha: float,
    ):
        super().__init__(rows, targets, encoder, batch_size)
        self.teacher_logits, self.temperature, self.alpha = teacher_logits, temperature, alpha

    def next_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        chosen = self.next_indices(generator)
        inputs = self.encoder.batch([self.rows[i] for i in chosen])
        return (*inputs, self.targets[chosen], self.teacher_logits[chosen])

    def loss_sum(self, model, batch) -> torch.Tensor:
        ids, mask, types, y, teacher_logits = batch
        return distill_loss_sum(model(ids, mask, types), teacher_logits, y, self.temperature, self.alpha)


def load_teacher_classifier(teacher: str | os.PathLike, device: str = "auto"):
    """The teacher as a TextClassificationPipeline, checked to be a single-label fine-tuned classifier."""
    arch = ckpt.read_config(ckpt.resolve_checkpoint(teacher)).get("arch")
    if arch != "classifier":
        raise ConfigError(
            f"--train distills a fine-tuned classifier, but {teacher} is a {arch} checkpoint; "
            "give a run of `lmforge finetune --task classify` (or, for a language model, --data)"
        )
    clf = TextClassificationPipeline(teacher, device=device)
    if clf.multi_label:
        raise ConfigError(f"{teacher} is a multi-label classifier; distillation supports single-label ones")
    return clf


def student_backbone(preset: str, teacher_tokenizer, train: list[Example], overrides: dict):
    """(backbone arch, its config as a dict, tokenizer, longest input) of the student; `overrides` are the
    --model.* values that name a field of the backbone's config (they are removed from the dict)."""
    if (
        preset in SCRATCH
    ):  # the from-scratch BiLSTM / BiGRU of `finetune --model lstm`, with its word tokenizer
        base = backbone(preset, [t for ex in train for t in (ex.text, ex.pair) if t])
        arch, tokenizer, longest = base.arch, base.tokenizer, base.longest
        config = RNNEncoderConfig(cell=preset)
    else:
        arch, values = get_preset(preset)
        if arch not in ("bert", "gpt"):
            raise ConfigError(
                f"preset {preset!r} is a {arch} model; a student classifier needs a bert or gpt "
                f"preset, or {' / '.join(SCRATCH)} (from scratch)"
            )
        config, tokenizer = model_config_class(arch)(**values), teacher_tokenizer
    names = {f.name for f in dataclasses.fields(config)}
    mine = {k: overrides.pop(f"model.{k}") for k in sorted(names) if f"model.{k}" in overrides}
    apply_section(config, mine, "model")
    config.vocab_size = tokenizer.vocab_size
    encoder = dataclasses.asdict(config)
    if preset in SCRATCH:  # the classifier fills these in itself
        encoder = {k: v for k, v in encoder.items() if k not in ("cell", "vocab_size")}
        return arch, encoder, tokenizer, longest
    return arch, encoder, tokenizer, config.block_size


def merged_fields(default: Fields, fields: Fields | dict | None) -> Fields:
    """`fields`, or the teacher's field names with those a dict gives (non-None) replaced."""
    if isinstance(fields, Fields):
        return fields
    given = {k: v for k, v in (fields or {}).items() if v is not None}
    return dataclasses.replace(default, **given)


def distill_classifier(
    teacher: str | os.PathLike,
    train: str | os.PathLike,
    out: str | os.PathLike,
    student_preset: str,
    dev: str | os.PathLike | None = None,
    fields: Fields | dict | None = None,
    epochs: float = 3,
    max_length: int | None = None,
    overrides: dict | list[str] | None = None,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    temperature: float = 2.0,
    alpha: float = 0.5,
    progress: bool = True,
) -> RunResult:
    """Train a student classifier (`student_preset`: a bert/gpt preset or lstm/gru) on a labelled file against a
    fine-tuned teacher classifier; the run goes to `out` and its checkpoints are ordinary classifiers.

    `fields` defaults to the teacher's field names (a dict replaces only those it names). `overrides` are
    --model.* (the student backbone's shape, e.g. model.n_layer; other model.* keys are the classifier's, e.g.
    model.pooling), --optim.* and --train.* settings; the default learning rate is 1e-3 (a student starts from
    scratch), the batch size 32, and the steps `epochs` passes over the training file."""
    check_settings(temperature, alpha)
    if epochs <= 0 or (max_length is not None and max_length < 4):
        raise ConfigError("--epochs must be positive and --max-length at least 4")
    run_dir = ckpt.require_new_run_dir(out)
    clf = load_teacher_classifier(teacher)
    fields = merged_fields(clf.fields, fields)
    if clf.task == "nli" and fields.pair is None:
        raise ConfigError("the teacher classifies text pairs: give --text-pair-field")
    train_examples = read_examples(train, fields)
    check_labels(train_examples, clf.labels, train)
    dev_examples = read_examples(dev, fields) if dev else None
    if dev_examples:
        check_labels(dev_examples, clf.labels, dev)

    overrides = run_overrides(overrides, max_steps, max_minutes)
    arch, encoder_cfg, tokenizer, longest = student_backbone(
        student_preset, clf.lm.tokenizer, train_examples, overrides
    )
    # The student's labels are the teacher's, in its order: the logits of both line up.
    model_cfg = ClassifierConfig(
        backbone=arch,
        encoder=encoder_cfg,
        labels=list(clf.labels),
        block_size=min(max_length or 128, longest),
    )
    options = FineTuneOptions(epochs=epochs, batch_size=32, overrides=overrides)
    cfg = finetune_config("classifier", model_cfg, len(train_examples), options, lr=1e-3, warmup=False)

    rows = [clf.encoder(ex.text, ex.pair) for ex in train_examples]
    teacher_logits = predict_logits(clf.lm.model, clf.encoder, rows, clf.lm.device)
    info = {
        "task": clf.task,
        "train": str(train),
        "dev": str(dev) if dev else None,
        "lora": None,
        "fields": dataclasses.asdict(fields),
        "backbone": student_preset,
        "distilled_from": {"teacher": str(clf.lm.path), "temperature": temperature, "alpha": alpha},
    }
    del clf  # the teacher's logits are all training needs of it
    spec = classify_spec(cfg, run_dir, tokenizer, train_examples, dev_examples, None, info)
    o = spec.objective
    objective = DistillClassify(
        o.rows, o.targets, o.encoder, o.batch_size, teacher_logits, temperature, alpha
    )
    d = info["distilled_from"]
    card = [
        *spec.data_card,
        f"- distilled from `{d['teacher']}` (temperature {d['temperature']}, alpha {d['alpha']})",
    ]
    spec = dataclasses.replace(spec, objective=objective, data_card=card, resume_hint=NO_RESUME)
    return Trainer(cfg, spec, run_dir, progress=progress).run()


def side_by_side(
    teacher: str | os.PathLike,
    student: str | os.PathLike,
    train: str | os.PathLike,
    dev: str | os.PathLike | None = None,
) -> dict:
    """Parameters, dev accuracy and macro-F1 (None without `dev`), and examples/s of prediction on the CPU (texts
    in, probabilities out, in batches of 64; on the dev file, or the training file without one) of both models.
    Both read the files with the field names the student was trained with."""
    models = {
        name: TextClassificationPipeline(path, device="cpu")
        for name, path in (("teacher", teacher), ("student", student))
    }
    examples = read_examples(dev or train, models["student"].fields)
    if dev:
        check_labels(examples, models["teacher"].labels, dev)
    timed = examples[:SPEED_EXAMPLES]
    out = {}
    for name, clf in models.items():
        clf.probabilities(timed[:64])  # warm-up
        start = time.perf_counter()
        clf.probabilities(timed)
        speed = len(timed) / (time.perf_counter() - start)
        scores = {"accuracy": None, "macro_f1": None}
        if dev:
            y = targets_of(examples, clf.labels, False).numpy()
            m = classification_metrics(y, clf.probabilities(examples).numpy(), clf.labels)
            scores = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
        out[name] = {
            "path": str(clf.lm.path),
            "parameters": clf.lm.model.num_params(),
            **scores,
            "examples_per_s": speed,
        }
    return out
