"""Fine-tuning on paired text (translation, summarization) through the one training loop: an encoder-decoder, or a
decoder-only model trained on "source → target" prompts.

    finetune_pairs("translate", "seq2seq-small", "train.tsv", "run", dev="dev.tsv", options=FineTuneOptions(epochs=10))
    lmforge.load("run/best").transduce("ein Haus", num_beams=4)

--model is a seq2seq checkpoint (span-corruption pretrained: `lmforge pretrain --arch seq2seq`) or a seq2seq preset,
which starts from random weights with a byte-level BPE tokenizer trained on the training sources and targets; or a
gpt checkpoint, fine-tuned on `<|eos|> source separator target <|eos|>` with the loss on the target only
(tasks/translate/prompts.py; the format goes into every checkpoint's config). The best checkpoint is chosen by BLEU
(translate) or ROUGE-L (summarize) of greedy decodes of the first dev pairs.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from lmforge import checkpoint as ckpt
from lmforge.config import switch
from lmforge.errors import ConfigError
from lmforge.eval.seq2seq_metrics import score_outputs
from lmforge.generate.transduce import decode_texts, encode_source
from lmforge.models.modes import eval_mode
from lmforge.models.registry import PRESETS, build_model, get_preset, model_config_class
from lmforge.models.seq2seq import decoder_start_id
from lmforge.tasks.common import FineTuneOptions, finetune_config, finetune_spec
from lmforge.tasks.translate.pairs import Pair, read_pairs
from lmforge.tasks.translate.prompts import CONFIG_KEY, PairPrompt
from lmforge.tokenizers import Tokenizer
from lmforge.train.labels import IGNORE_INDEX
from lmforge.train.objectives import (
    LabelledSequences,
    ShuffledEpochs,
    collate_pairs,
    labelled_loss,
    seq2seq_loss_sum,
)
from lmforge.train.trainer import RunResult, RunSpec, Trainer

SELECTION = {"translate": ("val_bleu", "max"), "summarize": ("val_rougeL", "max")}
DEV_DECODES = 200  # dev pairs decoded at each validation: decoding is the slow part of a seq2seq evaluation


def encode_pairs(pairs: list[Pair], tokenizer: Tokenizer, model_cfg) -> list[tuple[list[int], list[int]]]:
    """(source ids as the model reads them, target ids + end-of-sequence), both cut to the model's block."""
    block_size = model_cfg.block_size
    return [
        (
            encode_source(tokenizer, p.source, model_cfg),
            tokenizer.encode(p.target)[: block_size - 1] + [tokenizer.eos_id],
        )
        for p in pairs
    ]


class PairsObjective(ShuffledEpochs):
    """Shuffled epochs over (source, target) token pairs; summed target-token cross-entropy."""

    name = "pairs"

    def __init__(
        self,
        pairs: list[tuple[list[int], list[int]]],
        start_id: int,
        pad_id: int,
        batch_size: int,
        label_smoothing: float = 0.0,
        group_by_length: bool = False,
        limit: int | None = None,
    ):
        lengths = [len(s) + len(t) for s, t in pairs] if group_by_length else None
        super().__init__(len(pairs), batch_size, lengths=lengths)
        self.pairs, self.start_id, self.pad_id, self.label_smoothing = (
            pairs,
            start_id,
            pad_id,
            label_smoothing,
        )
        self.limit = limit  # the model's longest sequence: padding stops there
        # Lengths padded up to a multiple of this (padded_width): the Trainer sets it (Trainer.ROUND_LENGTHS).
        self.round_to = 1

    def next_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        chosen = self.next_indices(generator)
        return collate_pairs(
            [self.pairs[i] for i in chosen], self.start_id, self.pad_id, self.round_to, self.limit
        )

    @staticmethod
    def count_targets(batch) -> torch.Tensor:
        return (batch[-1] != IGNORE_INDEX).sum()

    def loss_sum(self, model, batch) -> torch.Tensor:
        return seq2seq_loss_sum(model, batch, self.label_smoothing)


def pairs_spec(
    cfg,
    run_dir,
    tokenizer: Tokenizer,
    train: list[Pair],
    dev: list[Pair] | None,
    state: dict | None,
    info: dict,
) -> RunSpec:
    """The run specification of a translate/summarize fine-tune: an encoder-decoder on (source, target) pairs, or a
    gpt on prompted pairs (`cfg.arch` decides), validated by the dev loss and the BLEU / ROUGE-L of greedy decodes
    of the first DEV_DECODES dev pairs."""
    task = info["task"]
    t = cfg.train
    decoder_only = cfg.arch == "gpt"
    if decoder_only:
        block = cfg.model.block_size
        base = PairPrompt.for_tokenizer(tokenizer)
        rows = base.training_rows(tokenizer, train, block, info["train"])
        prompt = PairPrompt(base.separator, max(target_tokens(labels) for _, labels in rows))
        dev_rows = prompt.training_rows(tokenizer, dev[:DEV_DECODES], block, info["dev"]) if dev else []
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
        objective = LabelledSequences(
            rows, pad, t.batch_size, t.group_by_length, switch("train.pack", t.pack) != "false", limit=block
        )
        data_info = {**info, CONFIG_KEY: prompt.to_dict()}
        longest_target = max((target_tokens(labels) for _, labels in dev_rows), default=0)
    else:
        m = cfg.model
        m.vocab_size = tokenizer.vocab_size
        rows = encode_pairs(train, tokenizer, m)
        objective = PairsObjective(
            rows,
            decoder_start_id(tokenizer),
            tokenizer.pad_id or 0,
            t.batch_size,
            m.label_smoothing,
            t.group_by_length,
            limit=m.block_size,
        )
        dev_rows = encode_pairs(dev[:DEV_DECODES], tokenizer, m) if dev else []
        data_info = info
        longest_target = max((len(target) for _, target in dev_rows), default=0)

    def build():
        model = build_model(cfg.arch, cfg.model)
        if state is not None:
            model.load_state_dict(state)
        return model

    @torch.no_grad()
    def validate(model, device, amp_dtype):
        if not dev:
            return None
        pairs = dev[:DEV_DECODES]
        with eval_mode(model):
            # The teacher-forced loss is the trainer's sanity check (it stops on NaN); the metric picks the checkpoint.
            if decoder_only:
                loss = labelled_loss(model, dev_rows, objective.pad_id, device)
            else:
                total, count = 0.0, 0
                for first in range(0, len(dev_rows), 64):
                    batch = collate_pairs(dev_rows[first : first + 64], objective.start_id, objective.pad_id)
                    batch = tuple(x.to(device) for x in batch)
                    total += float(seq2seq_loss_sum(model, batch))
                    count += int(objective.count_targets(batch))
                loss = total / max(count, 1)
            # An output much longer than the longest reference scores badly anyway; an untrained model would otherwise
            # run to the end of the block on every pair.
            sources, limit = [p.source for p in pairs], longest_target + 8
            if decoder_only:
                outputs = prompt.decode_texts(model, tokenizer, sources, max_new_tokens=limit)
            else:
                outputs = decode_texts(model, tokenizer, sources, max_new_tokens=limit)
        return {"loss": loss, **score_outputs(task, outputs, [p.target for p in pairs])}

    card = [f"- task: {task}; training file `{info['train']}` ({len(train):,} pairs)"]
    if dev:
        card.append(
            f"- dev file: `{info['dev']}` ({len(dev):,} pairs; the first {min(DEV_DECODES, len(dev))} decoded "
            "greedily at each validation)"
        )
    if decoder_only:
        card.append(
            f"- decoder-only: sequences `<|eos|> source {prompt.separator!r} target <|eos|>`, the loss on the "
            "target and its end only; sources too long for the context lose their end"
        )
    return finetune_spec(
        cfg,
        run_dir,
        data_info,
        tokenizer=tokenizer,
        objective=objective,
        build_model=build,
        validate=validate,
        selection=SELECTION[task],
        data_size=f"{len(rows):,} training pairs",
        data_card=card,
        usage=f"evaluate {{run}} --task {task} --data test.tsv --num-beams 4",
    )


def target_tokens(labels: list[int]) -> int:
    return sum(t != IGNORE_INDEX for t in labels)


def starting_point(
    model: str, train: list[Pair], vocab_size: int | None
) -> tuple[str, dict, Tokenizer, dict | None]:
    """(arch: seq2seq or gpt, model config, tokenizer, pretrained weights or None for a preset trained from
    scratch)."""
    if model in PRESETS:
        arch, values = get_preset(model)
        if arch != "seq2seq":
            raise ConfigError(
                f"--model {model} is a {arch} preset; translation and summarization start from a "
                "seq2seq preset or a pretrained (seq2seq or gpt) checkpoint"
            )
        texts = [t for p in train for t in (p.source, p.target)]
        # One vocabulary for both sides, so the shared embedding matrix serves encoder, decoder and output.
        tokenizer = Tokenizer.train("bpe", texts, vocab_size=vocab_size or values.get("vocab_size"))
        return arch, values, tokenizer, None
    if not Path(model).exists():
        raise ConfigError(
            f"--model {model!r} is neither a checkpoint nor a seq2seq preset (seq2seq-test, seq2seq-small)"
        )
    pretrained, tokenizer, config = ckpt.load_checkpoint(model)
    if config["arch"] not in ("seq2seq", "gpt"):
        raise ConfigError(
            f"{model} is a {config['arch']} checkpoint; translation and summarization need a seq2seq "
            "(encoder-decoder) or gpt (decoder-only) one"
        )
    return config["arch"], dataclasses.asdict(pretrained.config), tokenizer, pretrained.state_dict()


def finetune_pairs(
    task: str,
    model: str,
    train: str | os.PathLike,
    out: str | os.PathLike,
    dev: str | os.PathLike | None = None,
    source_field: str = "src",
    target_field: str = "tgt",
    source_lang: str | None = None,
    target_lang: str | None = None,
    options: FineTuneOptions | None = None,
    max_examples: int | None = None,
    vocab_size: int | None = None,
    progress: bool = True,
    resume: bool = False,
) -> RunResult:
    """Fine-tune a seq2seq preset or checkpoint, or a gpt checkpoint, on a pairs file (or parallel files)."""
    options = options or FineTuneOptions(epochs=10)
    if task not in SELECTION:
        raise ConfigError(f"task must be one of {', '.join(SELECTION)}, got {task!r}")
    resume_from = ckpt.resume_point(out, resume)
    options.validate()
    langs = {"source_lang": source_lang, "target_lang": target_lang}
    train_pairs = read_pairs(train, source_field, target_field, max_pairs=max_examples, **langs)
    dev_pairs = read_pairs(dev, source_field, target_field, **langs) if dev else None
    arch, values, tokenizer, state = starting_point(model, train_pairs, vocab_size)
    if arch == "seq2seq":
        values["vocab_size"] = tokenizer.vocab_size
    lr = options.lr or (1e-3 if state is None else 3e-4)
    cfg = finetune_config(arch, model_config_class(arch)(**values), len(train_pairs), options, lr, beta2=0.98)
    info = {
        "task": task,
        "train": str(train),
        "dev": str(dev) if dev else None,
        "model": str(model),
        "fields": {"source": source_field, "target": target_field},
        **langs,
    }
    spec = pairs_spec(cfg, out, tokenizer, train_pairs, dev_pairs, state, info)
    options.attach(spec)  # a caller's hooks (lmforge tune's pruning and Ctrl-C hint)
    return Trainer(cfg, spec, out, progress=progress, resume_from=resume_from).run()
