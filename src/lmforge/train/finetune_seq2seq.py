"""Fine-tuning on paired text (translation, summarization) through the one training loop: an encoder-decoder, or a
decoder-only model trained on "source → target" prompts.

    finetune_seq2seq("translate", "seq2seq-small", "train.tsv", "run", dev="dev.tsv", epochs=10)
    lmforge.load("run/best").transduce("ein Haus", num_beams=4)

--model is a seq2seq checkpoint (span-corruption pretrained: `lmforge pretrain --arch seq2seq`) or a seq2seq preset,
which starts from random weights with a byte-level BPE tokenizer trained on the training sources and targets; or a
gpt checkpoint, fine-tuned on `<|eos|> source separator target <|eos|>` with the loss on the target only
(tasks/pair_prompts.py; the format goes into every checkpoint's config). The best checkpoint is chosen by BLEU
(translate) or ROUGE-L (summarize) of greedy decodes of the first dev pairs.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch

from lmforge.config import OptimConfig, RunConfig, TrainConfig, parse_overrides, set_dotted, switch
from lmforge.errors import ConfigError
from lmforge.eval.seq2seq_metrics import decode_texts, score_outputs
from lmforge.models.registry import PRESETS, build_model, get_preset, model_config_class
from lmforge.tasks.pair_prompts import CONFIG_KEY, PairPrompt
from lmforge.tasks.pairs import Pair, read_pairs
from lmforge.tokenizers import Tokenizer
from lmforge.train.finetune import TaskTrainer
from lmforge.train.finetune_chat import ChatObjective, collate, loss_sum
from lmforge.train.objectives import IGNORE_INDEX, ShuffledEpochs, collate_pairs, seq2seq_loss_sum
from lmforge.train.trainer import RunResult

SELECTION = {"translate": ("val_bleu", "max"), "summarize": ("val_rougeL", "max")}
DEV_DECODES = 200  # dev pairs decoded at each validation: decoding is the slow part of a seq2seq evaluation


def encode_pairs(pairs: list[Pair], tokenizer: Tokenizer, block_size: int) -> list[tuple[list[int], list[int]]]:
    """(source ids, target ids + end-of-sequence), both cut to the model's block."""
    out = []
    for p in pairs:
        source = tokenizer.encode(p.source)[:block_size] or [tokenizer.unk_id or 0]
        out.append((source, tokenizer.encode(p.target)[: block_size - 1] + [tokenizer.eos_id]))
    return out


class PairsObjective(ShuffledEpochs):
    """Shuffled epochs over (source, target) token pairs; summed target-token cross-entropy."""

    name = "pairs"

    def __init__(self, pairs: list[tuple[list[int], list[int]]], start_id: int, pad_id: int, batch_size: int,
                 label_smoothing: float = 0.0, group_by_length: bool = False):
        lengths = [len(s) + len(t) for s, t in pairs] if group_by_length else None
        super().__init__(len(pairs), batch_size, lengths=lengths)
        self.pairs, self.start_id, self.pad_id, self.label_smoothing = pairs, start_id, pad_id, label_smoothing

    def next_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        chosen = self.next_indices(generator)
        return collate_pairs([self.pairs[i] for i in chosen], self.start_id, self.pad_id)

    @staticmethod
    def count_targets(batch) -> torch.Tensor:
        return (batch[-1] != IGNORE_INDEX).sum()

    def loss_sum(self, model, batch) -> torch.Tensor:
        return seq2seq_loss_sum(model, batch, self.label_smoothing)


class Seq2SeqFineTuner(TaskTrainer):
    """The training loop over a pairs file, validated by decoding dev sources and scoring them."""

    def __init__(self, cfg: RunConfig, run_dir, tokenizer: Tokenizer, train: list[Pair], dev: list[Pair] | None,
                 state: dict | None, info: dict, progress: bool = True, resume_from: Path | None = None):
        self.task_tokenizer, self.train_pairs, self.dev_pairs = tokenizer, train, dev
        self.pretrained_state, self.info = state, info
        self.selection = SELECTION[info["task"]]
        super().__init__(cfg, info["train"], run_dir, progress=progress, resume_from=resume_from)

    @property
    def usage(self) -> str:
        return f"evaluate {{run}} --task {self.info['task']} --data test.tsv --num-beams 4"

    def _setup_data(self) -> None:
        from lmforge.models.seq2seq import decoder_start_id

        m = self.cfg.model
        self.tokenizer = self.task_tokenizer
        m.vocab_size = self.tokenizer.vocab_size
        rows = encode_pairs(self.train_pairs, self.tokenizer, m.block_size)
        self.objective = PairsObjective(rows, decoder_start_id(self.tokenizer), self.tokenizer.pad_id or 0,
                                        self.cfg.train.batch_size, m.label_smoothing, self.cfg.train.group_by_length)
        self.dev_rows = encode_pairs(self.dev_pairs[:DEV_DECODES], self.tokenizer, m.block_size) if self.dev_pairs else []
        self.data_size = f"{len(rows):,} training pairs"
        self.data_info = self.info

    def _build_model(self) -> torch.nn.Module:
        model = build_model("seq2seq", self.cfg.model)
        if self.pretrained_state is not None:
            model.load_state_dict(self.pretrained_state)
        return model

    @torch.no_grad()
    def _validate(self) -> dict | None:
        if not self.dev_pairs:
            return None
        pairs = self.dev_pairs[:DEV_DECODES]
        was_training = self.model.training
        self.model.eval()
        # The teacher-forced loss is the trainer's sanity check (it stops on NaN); the metric picks the checkpoint.
        total, count = 0.0, 0
        for first in range(0, len(self.dev_rows), 64):
            batch = tuple(t.to(self.device) for t in self._collate(self.dev_rows[first : first + 64]))
            total += float(self._dev_loss_sum(batch))
            count += int(self.objective.count_targets(batch))
        # An output much longer than the longest reference scores badly anyway; an untrained model would otherwise
        # run to the end of the block on every pair.
        outputs = self._decode([p.source for p in pairs], max_new_tokens=self._longest_dev_target() + 8)
        self.model.train(was_training)
        return {"loss": total / max(count, 1), **score_outputs(self.info["task"], outputs, [p.target for p in pairs])}

    # ---- what the decoder-only variant replaces --------------------------------------------------------------
    def _collate(self, rows) -> tuple[torch.Tensor, ...]:
        return collate_pairs(rows, self.objective.start_id, self.objective.pad_id)

    def _dev_loss_sum(self, batch) -> torch.Tensor:
        return seq2seq_loss_sum(self.model, batch)

    def _longest_dev_target(self) -> int:
        return max(len(target) for _, target in self.dev_rows)

    def _decode(self, sources: list[str], max_new_tokens: int) -> list[str]:
        return decode_texts(self.model, self.tokenizer, sources, max_new_tokens=max_new_tokens)

    def _data_card(self) -> list[str]:
        lines = [f"- task: {self.info['task']}; training file `{self.info['train']}` ({len(self.train_pairs):,} pairs)"]
        if self.dev_pairs:
            lines.append(f"- dev file: `{self.info['dev']}` ({len(self.dev_pairs):,} pairs; the first "
                         f"{min(DEV_DECODES, len(self.dev_pairs))} decoded greedily at each validation)")
        return lines


class PromptedPairsFineTuner(Seq2SeqFineTuner):
    """A decoder-only model (gpt) trained on `<|eos|> source separator target <|eos|>` sequences with the loss on the
    target tokens only (tasks/pair_prompts.py), batched and scored as chat fine-tuning does; validated like the
    encoder-decoder, by the dev loss and the BLEU / ROUGE-L of greedy decodes."""

    def _setup_data(self) -> None:
        block = self.cfg.model.block_size
        self.tokenizer = self.task_tokenizer
        prompt = PairPrompt.for_tokenizer(self.tokenizer)
        rows = prompt.training_rows(self.tokenizer, self.train_pairs, block, self.info["train"])
        self.prompt = PairPrompt(prompt.separator, max(_target_tokens(labels) for _, labels in rows))
        self.dev_rows = []
        if self.dev_pairs:
            self.dev_rows = self.prompt.training_rows(self.tokenizer, self.dev_pairs[:DEV_DECODES], block,
                                                      self.info["dev"])
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else self.tokenizer.eos_id
        # (ids, labels) rows, summed loss
        t = self.cfg.train
        packed = switch("train.pack", t.pack) != "false"
        self.objective = ChatObjective(rows, pad, t.batch_size, t.group_by_length, packed)
        self.data_size = f"{len(rows):,} training pairs"
        self.data_info = {**self.info, CONFIG_KEY: self.prompt.to_dict()}

    def _build_model(self) -> torch.nn.Module:
        model = build_model("gpt", self.cfg.model)
        model.load_state_dict(self.pretrained_state)
        return model

    def _collate(self, rows) -> tuple[torch.Tensor, ...]:
        return collate(rows, self.objective.pad_id)

    def _dev_loss_sum(self, batch) -> torch.Tensor:
        return loss_sum(self.model, batch)

    def _longest_dev_target(self) -> int:
        return max(_target_tokens(labels) for _, labels in self.dev_rows)

    def _decode(self, sources: list[str], max_new_tokens: int) -> list[str]:
        return self.prompt.decode_texts(self.model, self.tokenizer, sources, max_new_tokens=max_new_tokens)

    def _data_card(self) -> list[str]:
        return [*super()._data_card(),
                f"- decoder-only: sequences `<|eos|> source {self.prompt.separator!r} target <|eos|>`, the loss on the "
                "target and its end only; sources too long for the context lose their end"]


def _target_tokens(labels: list[int]) -> int:
    return sum(t != IGNORE_INDEX for t in labels)


def _starting_point(model: str, train: list[Pair], vocab_size: int | None) -> tuple[str, dict, Tokenizer, dict | None]:
    """(arch: seq2seq or gpt, model config, tokenizer, pretrained weights or None for a preset trained from
    scratch)."""
    from lmforge.train.checkpoint import load_checkpoint

    if model in PRESETS:
        arch, values = get_preset(model)
        if arch != "seq2seq":
            raise ConfigError(f"--model {model} is a {arch} preset; translation and summarization start from a "
                              "seq2seq preset or a pretrained (seq2seq or gpt) checkpoint")
        texts = [t for p in train for t in (p.source, p.target)]
        # One vocabulary for both sides, so the shared embedding matrix serves encoder, decoder and output.
        tokenizer = Tokenizer.train("bpe", texts, vocab_size=vocab_size or values.get("vocab_size"))
        return arch, values, tokenizer, None
    if not Path(model).exists():
        raise ConfigError(f"--model {model!r} is neither a checkpoint nor a seq2seq preset (seq2seq-test, seq2seq-small)")
    pretrained, tokenizer, config = load_checkpoint(model)
    if config["arch"] not in ("seq2seq", "gpt"):
        raise ConfigError(f"{model} is a {config['arch']} checkpoint; translation and summarization need a seq2seq "
                          "(encoder-decoder) or gpt (decoder-only) one")
    return config["arch"], dataclasses.asdict(pretrained.config), tokenizer, pretrained.state_dict()


def finetune_seq2seq(
    task: str,
    model: str,
    train: str | os.PathLike,
    out: str | os.PathLike,
    dev: str | os.PathLike | None = None,
    source_field: str = "src",
    target_field: str = "tgt",
    source_lang: str | None = None,
    target_lang: str | None = None,
    epochs: float = 10,
    max_examples: int | None = None,
    batch_size: int = 32,
    lr: float | None = None,
    vocab_size: int | None = None,
    patience: int | None = None,
    max_minutes: float | None = None,
    seed: int = 0,
    overrides: dict | list[str] | None = None,
    progress: bool = True,
    resume: bool = False,
) -> RunResult:
    from lmforge.train import checkpoint as ckpt

    if task not in SELECTION:
        raise ConfigError(f"task must be one of {', '.join(SELECTION)}, got {task!r}")
    resume_from = ckpt.resume_point(out, resume)
    if epochs <= 0 or batch_size < 1:
        raise ConfigError("--epochs must be positive and --batch-size at least 1")
    langs = {"source_lang": source_lang, "target_lang": target_lang}
    train_pairs = read_pairs(train, source_field, target_field, max_pairs=max_examples, **langs)
    dev_pairs = read_pairs(dev, source_field, target_field, **langs) if dev else None
    arch, values, tokenizer, state = _starting_point(model, train_pairs, vocab_size)
    if arch == "seq2seq":
        values["vocab_size"] = tokenizer.vocab_size
    scratch = state is None
    steps_per_epoch = math.ceil(len(train_pairs) / batch_size)
    steps = max(1, math.ceil(epochs * steps_per_epoch))
    cfg = RunConfig(
        arch=arch,
        model=model_config_class(arch)(**values),
        optim=OptimConfig(lr=lr or (1e-3 if scratch else 3e-4), weight_decay=0.01, beta2=0.98,
                          warmup_steps=steps // 10, schedule="linear", min_lr_ratio=0.0),
        train=TrainConfig(batch_size=batch_size, max_steps=steps, eval_every=max(1, min(steps_per_epoch, steps)),
                          max_minutes=max_minutes, patience=patience, seed=seed, keep_last=1, tensorboard=False),
    )
    for key, value in parse_overrides(overrides).items():
        set_dotted(cfg, key, value)
    info = {"task": task, "train": str(train), "dev": str(dev) if dev else None, "model": str(model),
            "fields": {"source": source_field, "target": target_field}, **langs}
    tuner = PromptedPairsFineTuner if arch == "gpt" else Seq2SeqFineTuner
    return tuner(cfg, out, tokenizer, train_pairs, dev_pairs, state, info, progress, resume_from).run()
