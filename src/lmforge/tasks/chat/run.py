"""Chat fine-tuning of a GPT checkpoint on multi-turn conversations, through the one training loop.

    finetune_chat("gpt-ckpt", "chats.jsonl", "run", dev="dev.jsonl", options=FineTuneOptions(epochs=3))
    lmforge chat run/best

The loss covers the assistant turns only (their text and end marker: tasks/chat/template.py); a conversation longer than the
model's context loses its oldest turns, keeping the system message. Validation is that loss on the dev
conversations. Every checkpoint carries the chat template in its config.json ("chat_template", a Jinja string the
server renders; "data.chat", the markers `lmforge chat` uses).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

from lmforge import checkpoint as ckpt
from lmforge.config import switch
from lmforge.errors import ConfigError, DataError
from lmforge.models.registry import build_model, model_config_class
from lmforge.tasks.chat.template import ChatTemplate, read_conversations
from lmforge.tasks.common import FineTuneOptions, finetune_config, finetune_spec
from lmforge.tokenizers import Tokenizer
from lmforge.train.labels import IGNORE_INDEX
from lmforge.train.objectives import LabelledSequences, labelled_loss
from lmforge.train.privacy import private_training
from lmforge.train.trainer import RunResult, RunSpec, Trainer


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


def chat_spec(cfg, run_dir, tokenizer: Tokenizer, train, dev, state: dict, info: dict) -> RunSpec:
    """The run specification of a chat fine-tune, validated by the assistant-token loss on dev conversations."""
    template = ChatTemplate.for_tokenizer(tokenizer)
    block = cfg.model.block_size
    rows, skipped = encode_conversations(train, template, tokenizer, block)
    if not rows:
        raise DataError(f"no training conversation fits the model's context of {block} tokens")
    dev_rows = encode_conversations(dev, template, tokenizer, block)[0] if dev else []
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    t = cfg.train
    # DP-SGD (train/privacy.py) protects one conversation at a time: no packing by default under it
    packing = switch("train.pack", t.pack)
    pack = packing == "true" or (packing == "auto" and t.dp_epsilon is None)
    objective = LabelledSequences(rows, pad, t.batch_size, t.group_by_length, pack, limit=block)
    objective, hook = private_training(cfg, objective, len(rows))

    def build():
        model = build_model("gpt", cfg.model)
        model.load_state_dict(state)
        return model

    def validate(model, device, amp_dtype):
        if not dev_rows:
            return None
        loss = labelled_loss(model, dev_rows, pad, device)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50))}

    card = [
        f"- task: chat; training file `{info['train']}` ({len(train):,} conversations"
        + (
            f", {skipped} longer than the context even with only their last turn, left out)"
            if skipped
            else ")"
        ),
        f"- chat template: role markers {', '.join(repr(m) for m in template.markers.values())}, "
        f"turns end with {template.end!r}; the loss covers assistant turns only",
    ]
    if dev:
        card.append(f"- dev file: `{info['dev']}` ({len(dev):,} conversations)")
    return finetune_spec(
        cfg,
        run_dir,
        {**info, "chat": template.to_dict()},
        tokenizer=tokenizer,
        objective=objective,
        build_model=build,
        validate=validate,
        data_size=f"{len(rows):,} training conversations",
        data_card=card,
        config_extras={"chat_template": template.jinja()},
        usage="chat {run}",
        hook=hook,
    )


def finetune_chat(
    model: str,
    train: str | os.PathLike,
    out: str | os.PathLike,
    dev: str | os.PathLike | None = None,
    options: FineTuneOptions | None = None,
    max_examples: int | None = None,
    progress: bool = True,
    resume: bool = False,
) -> RunResult:
    """Fine-tune a GPT checkpoint on a JSONL file of conversations (default learning rate 1e-4, batch 16 when
    called directly)."""
    options = options or FineTuneOptions(batch_size=16)
    resume_from = ckpt.resume_point(out, resume)
    options.validate()
    if not Path(model).exists():
        raise ConfigError(
            f"--model {model!r} is not a checkpoint; chat fine-tuning starts from a GPT checkpoint"
        )
    train_chats = read_conversations(train, max_examples)
    dev_chats = read_conversations(dev) if dev else None
    pretrained, tokenizer, config = ckpt.load_checkpoint(model)
    if config["arch"] != "gpt":
        raise ConfigError(f"{model} is a {config['arch']} checkpoint; chat fine-tuning needs a gpt one")
    model_cfg = model_config_class("gpt")(**dataclasses.asdict(pretrained.config))
    cfg = finetune_config("gpt", model_cfg, len(train_chats), options, options.lr or 1e-4, beta2=None)
    info = {"task": "chat", "train": str(train), "dev": str(dev) if dev else None, "model": str(model)}
    spec = chat_spec(cfg, out, tokenizer, train_chats, dev_chats, pretrained.state_dict(), info)
    options.attach(spec)  # a caller's hooks (lmforge tune's pruning and Ctrl-C hint)
    return Trainer(cfg, spec, out, progress=progress, resume_from=resume_from).run()
