"""Fine-tuning for extractive question answering (SQuAD format) on a BERT-style checkpoint, through the one
training loop; the best checkpoint is chosen by the dev set's F1.

    finetune_qa("minilm", "squad-train.json", "run", dev="squad-dev.json", max_length=256)
    lmforge.pipeline("question-answering", model="run")   # tasks/qa/pipeline.py
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge import checkpoint as ckpt
from lmforge.errors import ConfigError, DataError
from lmforge.models.registry import build_model
from lmforge.models.span_qa import SpanQAConfig
from lmforge.tasks.common import FineTuneOptions, finetune_config, finetune_spec, load_backbone
from lmforge.tasks.qa.squad import QAExample, read_squad, squad_scores
from lmforge.tasks.qa.windows import Window, best_spans, collate, make_windows, window_logits
from lmforge.train.objectives import ShuffledEpochs
from lmforge.train.trainer import RunResult, RunSpec, Trainer


class SpanObjective(ShuffledEpochs):
    """Shuffled epochs over training windows; the mean of the start and end cross-entropies per window."""

    name = "span"

    def __init__(self, windows: list[Window], pad: int, batch_size: int):
        super().__init__(len(windows), batch_size)
        self.windows, self.pad = windows, pad

    def next_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        chosen = [self.windows[i] for i in self.next_indices(generator)]
        positions = torch.tensor([[w.start, w.end] for w in chosen], dtype=torch.long)
        return (*collate(chosen, self.pad), positions)

    @staticmethod
    def count_targets(batch) -> torch.Tensor:
        return torch.tensor(batch[0].shape[0], device=batch[0].device)

    @staticmethod
    def loss_sum(model, batch) -> torch.Tensor:
        ids, mask, types, positions = batch
        logits = model(ids, mask, types).float().masked_fill(mask[..., None] == 0, -1e4)
        start = F.cross_entropy(logits[..., 0], positions[:, 0], reduction="sum")
        end = F.cross_entropy(logits[..., 1], positions[:, 1], reduction="sum")
        return (start + end) / 2


def predict(model, tokenizer, examples: list[QAExample], device, batch_size: int = 32) -> list[dict]:
    cfg = model.config
    windows = make_windows(examples, tokenizer, cfg.block_size, cfg.doc_stride, with_answers=False)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    logits = window_logits(model, windows, pad, device, batch_size)
    return best_spans(examples, windows, logits, cfg.max_answer_tokens)


def score_qa(model, tokenizer, examples: list[QAExample], device) -> dict:
    answers = predict(model, tokenizer, examples, device)
    scores = squad_scores({a["id"]: a["answer"] for a in answers}, examples)
    # The trainer treats "loss" as the headline sanity check; for QA that is 100 - F1 (lower is better).
    return {"loss": 100.0 - scores["f1"], **scores}


def qa_spec(
    cfg,
    run_dir,
    tokenizer,
    train: list[QAExample],
    windows: list[Window],
    dev: list[QAExample] | None,
    backbone_state: dict,
    info: dict,
) -> RunSpec:
    """The run specification of an extractive QA fine-tune on SQuAD windows, validated by dev F1."""
    cfg.model.vocab_size = tokenizer.vocab_size
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    objective = SpanObjective(windows, pad, cfg.train.batch_size)

    def build():
        model = build_model(cfg.arch, cfg.model)
        load_backbone(model, backbone_state)
        return model

    def validate(model, device, amp_dtype):
        return score_qa(model, tokenizer, dev, device) if dev else None

    card = [
        f"- task: extractive question answering; training file `{info['train']}` ({len(train):,} questions)"
    ]
    if dev:
        card.append(f"- dev file: `{info['dev']}` ({len(dev):,} questions)")
    return finetune_spec(
        cfg,
        run_dir,
        info,
        tokenizer=tokenizer,
        objective=objective,
        build_model=build,
        validate=validate,
        selection=("val_f1", "max"),
        data_size=f"{len(train):,} questions in {len(windows):,} windows",
        data_card=card,
        usage="predict {run} --task qa --input questions.jsonl",
    )


def finetune_qa(
    model: str | os.PathLike,
    train: str | os.PathLike,
    out: str | os.PathLike,
    dev: str | os.PathLike | None = None,
    options: FineTuneOptions | None = None,
    max_examples: int | None = None,
    max_length: int = 384,
    doc_stride: int = 128,
    progress: bool = True,
    resume: bool = False,
) -> RunResult:
    """Fine-tune a bert checkpoint for extractive QA on a SQuAD-format file (default learning rate 5e-5)."""
    options = options or FineTuneOptions(epochs=2, batch_size=16)
    options.validate()
    resume_from = ckpt.resume_point(out, resume)
    if not Path(model).exists():
        raise ConfigError(
            f"--model {model} does not exist; give a bert checkpoint (e.g. one made by import-hf)"
        )
    pretrained, tokenizer, config = ckpt.load_checkpoint(model)
    if config["arch"] != "bert":
        raise ConfigError(f"{model} is a {config['arch']} checkpoint; extractive QA needs a bert encoder")
    train_examples = [ex for ex in read_squad(train) if ex.answers][:max_examples]
    if not train_examples:
        raise DataError(f"{train} has no question with an answer to learn from")
    dev_examples = read_squad(dev) if dev else None
    max_length = min(max_length, pretrained.config.block_size)
    doc_stride = min(doc_stride, max_length // 2)
    windows = make_windows(train_examples, tokenizer, max_length, doc_stride, with_answers=True)
    model_cfg = SpanQAConfig(
        encoder=dataclasses.asdict(pretrained.config), block_size=max_length, doc_stride=doc_stride
    )
    cfg = finetune_config("span_qa", model_cfg, len(windows), options, options.lr or 5e-5)
    info = {"task": "qa", "train": str(train), "dev": str(dev) if dev else None, "backbone": str(model)}
    spec = qa_spec(cfg, out, tokenizer, train_examples, windows, dev_examples, pretrained.state_dict(), info)
    options.attach(spec)  # a caller's hooks (lmforge tune's pruning and Ctrl-C hint)
    return Trainer(cfg, spec, out, progress=progress, resume_from=resume_from).run()
