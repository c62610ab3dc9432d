"""Fine-tuning for extractive question answering (SQuAD format) on a BERT-style checkpoint, through the one
training loop; the best checkpoint is chosen by the dev set's F1.

    finetune_qa("minilm", "squad-train.json", "run", dev="squad-dev.json", epochs=2, max_length=256)
    qa = QuestionAnsweringPipeline("run")
    qa(question="Who won?", context="The Broncos won the game.")   # {"answer": "The Broncos", "score", "start", "end"}
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.config import OptimConfig, RunConfig, TrainConfig, parse_overrides, set_dotted
from lmforge.errors import ConfigError, DataError
from lmforge.models.registry import build_model
from lmforge.models.span_qa import SpanQAConfig
from lmforge.tasks.qa import Window, best_spans, collate, make_windows, window_logits
from lmforge.tasks.squad import QAExample, read_squad, squad_scores
from lmforge.train.finetune import TaskTrainer, load_backbone
from lmforge.train.objectives import ShuffledEpochs
from lmforge.train.trainer import RunResult


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


class QAFineTuner(TaskTrainer):
    selection = ("val_f1", "max")
    usage = "predict {run} --task qa --input questions.jsonl"

    def __init__(self, cfg: RunConfig, run_dir, tokenizer, train: list[QAExample], windows: list[Window],
                 dev: list[QAExample] | None, backbone_state: dict, info: dict, progress: bool = True,
                 resume_from: Path | None = None):
        self.task_tokenizer, self.train_examples, self.dev_examples = tokenizer, train, dev
        self.windows = windows
        self.backbone_state, self.info = backbone_state, info
        super().__init__(cfg, info["train"], run_dir, progress=progress, resume_from=resume_from)

    def _setup_data(self) -> None:
        m = self.cfg.model
        self.tokenizer = self.task_tokenizer
        m.vocab_size = self.tokenizer.vocab_size
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        self.objective = SpanObjective(self.windows, pad, self.cfg.train.batch_size)
        self.data_size = f"{len(self.train_examples):,} questions in {len(self.windows):,} windows"
        self.data_info = self.info

    def _build_model(self) -> torch.nn.Module:
        model = build_model(self.cfg.arch, self.cfg.model)
        load_backbone(model, self.backbone_state)
        return model

    def _validate(self) -> dict | None:
        if not self.dev_examples:
            return None
        return score_qa(self.model, self.tokenizer, self.dev_examples, self.device)

    def _data_card(self) -> list[str]:
        lines = [f"- task: extractive question answering; training file `{self.info['train']}` "
                 f"({len(self.train_examples):,} questions)"]
        if self.dev_examples:
            lines.append(f"- dev file: `{self.info['dev']}` ({len(self.dev_examples):,} questions)")
        return lines


def finetune_qa(
    model: str | os.PathLike,
    train: str | os.PathLike,
    out: str | os.PathLike,
    dev: str | os.PathLike | None = None,
    epochs: float = 2,
    max_examples: int | None = None,
    max_length: int = 384,
    doc_stride: int = 128,
    batch_size: int = 16,
    lr: float = 5e-5,
    patience: int | None = None,
    max_minutes: float | None = None,
    seed: int = 0,
    overrides: dict | list[str] | None = None,
    progress: bool = True,
    resume: bool = False,
) -> RunResult:
    from lmforge.train import checkpoint as ckpt

    resume_from = ckpt.resume_point(out, resume)
    if not Path(model).exists():
        raise ConfigError(f"--model {model} does not exist; give a bert checkpoint (e.g. one made by import-hf)")
    backbone, tokenizer, config = ckpt.load_checkpoint(model)
    if config["arch"] != "bert":
        raise ConfigError(f"{model} is a {config['arch']} checkpoint; extractive QA needs a bert encoder")
    train_examples = [ex for ex in read_squad(train) if ex.answers][:max_examples]
    if not train_examples:
        raise DataError(f"{train} has no question with an answer to learn from")
    dev_examples = read_squad(dev) if dev else None
    max_length = min(max_length, backbone.config.block_size)
    doc_stride = min(doc_stride, max_length // 2)
    windows = make_windows(train_examples, tokenizer, max_length, doc_stride, with_answers=True)
    steps = max(1, math.ceil(epochs * len(windows) / batch_size))
    cfg = RunConfig(
        arch="span_qa",
        model=SpanQAConfig(encoder=dataclasses.asdict(backbone.config), block_size=max_length, doc_stride=doc_stride),
        optim=OptimConfig(lr=lr, weight_decay=0.01, beta2=0.999, warmup_steps=steps // 10, schedule="linear",
                          min_lr_ratio=0.0),
        train=TrainConfig(batch_size=batch_size, max_steps=steps, eval_every=max(1, steps // max(1, math.ceil(epochs))),
                          max_minutes=max_minutes, patience=patience, seed=seed, keep_last=1, tensorboard=False),
    )
    for key, value in parse_overrides(overrides).items():
        set_dotted(cfg, key, value)
    info = {"task": "qa", "train": str(train), "dev": str(dev) if dev else None, "backbone": str(model)}
    tuner = QAFineTuner(cfg, out, tokenizer, train_examples, windows, dev_examples, backbone.state_dict(), info, progress,
                        resume_from)
    return tuner.run()


class QuestionAnsweringPipeline:
    """question + context → {"answer", "score", "start", "end"} (character offsets into the context)."""

    def __init__(self, model: str | os.PathLike, device: str = "auto"):
        from lmforge.lm import load

        self.lm = load(model, device=device)
        if getattr(self.lm.model.config, "objective", None) != "span":
            raise ConfigError(f"{model} is not an extractive QA checkpoint; fine-tune one with --task qa")

    def __call__(self, question: str | list[dict] | None = None, context: str | None = None):
        single = not isinstance(question, list)
        items = [{"question": question, "context": context}] if single else question
        examples = []
        for i, item in enumerate(items):
            q, c = item.get("question"), item.get("context")
            if not isinstance(q, str) or not q.strip() or not isinstance(c, str) or not c.strip():
                raise ConfigError("each input needs a non-empty 'question' and 'context'")
            examples.append(QAExample(str(i), q.strip(), c))
        answers = [{k: a[k] for k in ("answer", "score", "start", "end")}
                   for a in predict(self.lm.model, self.lm.tokenizer, examples, self.lm.device)]
        return answers[0] if single else answers


def evaluate_qa(model: str | os.PathLike, data: str | os.PathLike, device: str = "auto") -> dict:
    """Exact match and F1 (official SQuAD v1.1 normalisation) of a QA checkpoint on a SQuAD-format file."""
    qa = QuestionAnsweringPipeline(model, device=device)
    examples = read_squad(data)
    return squad_scores({a["id"]: a["answer"] for a in predict(qa.lm.model, qa.lm.tokenizer, examples, qa.lm.device)},
                        examples)
