"""Chat fine-tuning of a GPT checkpoint on multi-turn conversations, through the one training loop.

    finetune_chat("gpt-ckpt", "chats.jsonl", "run", dev="dev.jsonl", epochs=3)
    lmforge chat run/best

The loss covers the assistant turns only (their text and end marker: tasks/chat.py); a conversation longer than the
model's context loses its oldest turns, keeping the system message. Validation is that loss on the dev
conversations. Every checkpoint carries the chat template in its config.json ("chat_template", a Jinja string the
server renders; "data.chat", the markers `lmforge chat` uses).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.config import OptimConfig, RunConfig, TrainConfig, parse_overrides, set_dotted, switch
from lmforge.errors import ConfigError, DataError
from lmforge.models.registry import build_model, model_config_class
from lmforge.tasks.chat import IGNORE_INDEX, ChatTemplate, read_conversations
from lmforge.tokenizers import Tokenizer
from lmforge.train.finetune import TaskTrainer
from lmforge.train.objectives import ShuffledEpochs
from lmforge.train.packing import collate_packed, pack
from lmforge.train.trainer import RunResult


def encode_conversations(conversations, template: ChatTemplate, tokenizer: Tokenizer, block_size: int):
    """(input ids, target ids with IGNORE_INDEX off the assistant turns) per conversation that fits the block once
    its oldest turns are dropped; the count of those that do not fit even with their last turn alone."""
    rows, skipped = [], 0
    for messages in conversations:
        try:
            kept = template.fit(tokenizer, messages, block_size + 1)  # inputs and targets are shifted by one
        except ConfigError:
            skipped += 1
            continue
        ids, is_target = template.encode(tokenizer, kept)
        targets = [t if keep else IGNORE_INDEX for t, keep in zip(ids[1:], is_target[1:])]
        if any(t != IGNORE_INDEX for t in targets):  # truncation may have left only user turns
            rows.append((ids[:-1], targets))
        else:
            skipped += 1
    return rows, skipped


def collate(rows, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x, _ in rows)
    x = torch.full((len(rows), width), pad_id, dtype=torch.long)
    y = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, targets) in enumerate(rows):
        x[i, : len(ids)] = torch.tensor(ids)
        y[i, : len(targets)] = torch.tensor(targets)
    return x, y


def loss_sum(model, batch) -> torch.Tensor:
    """Summed cross-entropy over the target tokens of (inputs, targets) or of packed (inputs, targets, segments)."""
    x, y, *segments = batch
    logits = model(x, segments=segments[0]) if segments else model(x)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction="sum")


class ChatObjective(ShuffledEpochs):
    """Shuffled epochs over the encoded conversations; summed cross-entropy over assistant tokens. With `pack`, a
    batch's examples share rows as wide as its longest one (train/packing.py): fewer, fuller rows, same loss."""

    name = "chat"
    packs = True

    def __init__(self, rows, pad_id: int, batch_size: int, group_by_length: bool = False, pack: bool = False):
        super().__init__(len(rows), batch_size, lengths=[len(x) for x, _ in rows] if group_by_length else None)
        self.rows, self.pad_id, self.packed = rows, pad_id, pack

    def next_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        chosen = [self.rows[i] for i in self.next_indices(generator)]
        if not self.packed:
            return collate(chosen, self.pad_id)
        lengths = [len(x) for x, _ in chosen]
        return collate_packed(chosen, pack(lengths, max(lengths)), self.pad_id)

    @staticmethod
    def count_targets(batch) -> torch.Tensor:
        return (batch[1] != IGNORE_INDEX).sum()

    @staticmethod
    def loss_sum(model, batch) -> torch.Tensor:
        return loss_sum(model, batch)


class ChatFineTuner(TaskTrainer):
    """The training loop over conversations, validated by the assistant-token loss on dev conversations."""

    selection = ("val_loss", "min")
    usage = "chat {run}"

    def __init__(self, cfg: RunConfig, run_dir, tokenizer: Tokenizer, train, dev, state: dict, info: dict,
                 progress: bool = True, resume_from: Path | None = None):
        self.task_tokenizer, self.train_chats, self.dev_chats = tokenizer, train, dev
        self.pretrained_state, self.info = state, info
        self.template = ChatTemplate.for_tokenizer(tokenizer)
        super().__init__(cfg, info["train"], run_dir, progress=progress, resume_from=resume_from)

    def _setup_data(self) -> None:
        self.tokenizer = self.task_tokenizer
        block = self.cfg.model.block_size
        rows, skipped = encode_conversations(self.train_chats, self.template, self.tokenizer, block)
        if not rows:
            raise DataError(f"no training conversation fits the model's context of {block} tokens")
        self.dev_rows = []
        if self.dev_chats:
            self.dev_rows = encode_conversations(self.dev_chats, self.template, self.tokenizer, block)[0]
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else self.tokenizer.eos_id
        t = self.cfg.train
        packed = switch("train.pack", t.pack) != "false"
        self.objective = ChatObjective(rows, pad, t.batch_size, t.group_by_length, packed)
        self.skipped = skipped
        self.data_size = f"{len(rows):,} training conversations"
        self.data_info = {**self.info, "chat": self.template.to_dict()}

    def _build_model(self) -> torch.nn.Module:
        model = build_model("gpt", self.cfg.model)
        model.load_state_dict(self.pretrained_state)
        return model

    def _config_extras(self) -> dict:
        return {"chat_template": self.template.jinja()}

    @torch.no_grad()
    def _validate(self) -> dict | None:
        if not self.dev_rows:
            return None
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        for first in range(0, len(self.dev_rows), 32):
            batch = tuple(t.to(self.device) for t in collate(self.dev_rows[first : first + 32], self.objective.pad_id))
            total += float(loss_sum(self.model, batch))
            count += int(ChatObjective.count_targets(batch))
        self.model.train(was_training)
        return {"loss": total / max(count, 1), "perplexity": math.exp(min(total / max(count, 1), 50))}

    def _data_card(self) -> list[str]:
        lines = [f"- task: chat; training file `{self.info['train']}` ({len(self.train_chats):,} conversations"
                 + (f", {self.skipped} longer than the context even with only their last turn, left out)"
                    if self.skipped else ")"),
                 f"- chat template: role markers {', '.join(repr(m) for m in self.template.markers.values())}, "
                 f"turns end with {self.template.end!r}; the loss covers assistant turns only"]
        if self.dev_chats:
            lines.append(f"- dev file: `{self.info['dev']}` ({len(self.dev_chats):,} conversations)")
        return lines


def finetune_chat(
    model: str,
    train: str | os.PathLike,
    out: str | os.PathLike,
    dev: str | os.PathLike | None = None,
    epochs: float = 3,
    max_examples: int | None = None,
    batch_size: int = 16,
    lr: float | None = None,
    patience: int | None = None,
    max_minutes: float | None = None,
    seed: int = 0,
    overrides: dict | list[str] | None = None,
    progress: bool = True,
    resume: bool = False,
) -> RunResult:
    from lmforge.train import checkpoint as ckpt

    resume_from = ckpt.resume_point(out, resume)
    if epochs <= 0 or batch_size < 1:
        raise ConfigError("--epochs must be positive and --batch-size at least 1")
    if not Path(model).exists():
        raise ConfigError(f"--model {model!r} is not a checkpoint; chat fine-tuning starts from a GPT checkpoint")
    train_chats = read_conversations(train, max_examples)
    dev_chats = read_conversations(dev) if dev else None
    pretrained, tokenizer, config = ckpt.load_checkpoint(model)
    if config["arch"] != "gpt":
        raise ConfigError(f"{model} is a {config['arch']} checkpoint; chat fine-tuning needs a gpt one")
    steps_per_epoch = math.ceil(len(train_chats) / batch_size)
    steps = max(1, math.ceil(epochs * steps_per_epoch))
    cfg = RunConfig(
        arch="gpt",
        model=model_config_class("gpt")(**dataclasses.asdict(pretrained.config)),
        optim=OptimConfig(lr=lr or 1e-4, weight_decay=0.01, warmup_steps=steps // 10, schedule="linear",
                          min_lr_ratio=0.0),
        train=TrainConfig(batch_size=batch_size, max_steps=steps, eval_every=max(1, min(steps_per_epoch, steps)),
                          max_minutes=max_minutes, patience=patience, seed=seed, keep_last=1, tensorboard=False),
    )
    for key, value in parse_overrides(overrides).items():
        set_dotted(cfg, key, value)
    info = {"task": "chat", "train": str(train), "dev": str(dev) if dev else None, "model": str(model)}
    return ChatFineTuner(cfg, out, tokenizer, train_chats, dev_chats, pretrained.state_dict(), info, progress,
                         resume_from).run()
