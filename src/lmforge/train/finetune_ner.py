"""Fine-tuning for named-entity recognition: a tagger (a BERT checkpoint or a from-scratch BiLSTM/BiGRU plus a
per-token head) trained on CoNLL files by the one training loop (trainer.Trainer).

    finetune_ner(model="minilm-ckpt", train="conll/train.txt", dev="conll/valid.txt", out="ner-run", epochs=3)

The best checkpoint is chosen by the dev set's entity-level F1 (seqeval, strict); early stopping with `patience`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.config import OptimConfig, RunConfig, TrainConfig, parse_overrides, set_dotted
from lmforge.errors import ConfigError, DataError
from lmforge.eval.ner import entity_metrics
from lmforge.models.registry import build_model
from lmforge.models.tagger import TaggerConfig
from lmforge.tasks.conll import Sentence, check_tags, read_conll, scheme_of, tag_set
from lmforge.tasks.examples import Example
from lmforge.tasks.word_encoding import IGNORE, WordEncoder
from lmforge.tokenizers import Tokenizer
from lmforge.train.finetune import SCRATCH, TaskTrainer, _backbone, load_backbone
from lmforge.train.objectives import ShuffledEpochs
from lmforge.train.trainer import RunResult


class TagObjective(ShuffledEpochs):
    """Shuffled epochs over the encoded training sentences; cross-entropy over the words' first sub-tokens."""

    name = "tag"

    def __init__(self, rows, encoder: WordEncoder, batch_size: int, group_by_length: bool = False):
        super().__init__(len(rows), batch_size, lengths=[len(r[0]) for r in rows] if group_by_length else None)
        self.rows, self.encoder = rows, encoder

    def next_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        chosen = self.next_indices(generator)
        return self.encoder.batch([self.rows[i] for i in chosen])

    @staticmethod
    def count_targets(batch) -> torch.Tensor:
        return (batch[2] != IGNORE).sum()  # the loss is per word, whatever the words' sub-token counts

    def loss_sum(self, model, batch) -> torch.Tensor:
        ids, mask, labels = batch
        logits = model(ids, mask)
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")


@torch.no_grad()
def tag_pieces(model, encoder: WordEncoder, sentences: list[list[list[int]]], device, batch_size: int = 64,
               gold: list[list[int]] | None = None) -> tuple[list[list[int]], list[list[float]], float]:
    """(tag index per word, its probability, mean gold-tag loss or nan) for sentences given as each word's
    sub-token ids. A sentence longer than max_length is read in consecutive pieces of whole words."""
    was_training = model.training
    model.eval()
    chunks = []  # (sentence, first word, encoded row)
    for s, pieces in enumerate(sentences):
        for a, b in encoder.spans(pieces):
            chunks.append((s, a, encoder.row(pieces[a:b])))
    tags = [[0] * len(p) for p in sentences]
    probs = [[0.0] * len(p) for p in sentences]
    loss, count = 0.0, 0
    order = sorted(range(len(chunks)), key=lambda i: len(chunks[i][2][0]))  # similar lengths pad less
    for start in range(0, len(order), batch_size):
        part = [chunks[i] for i in order[start : start + batch_size]]
        ids, mask, _ = encoder.batch([c[2] for c in part], device)
        logp = model(ids, mask).float().log_softmax(-1).cpu()
        for row, (s, a, (_, _, starts)) in enumerate(part):
            word_logp = logp[row, starts]
            best = word_logp.max(-1)
            tags[s][a : a + len(starts)] = best.indices.tolist()
            probs[s][a : a + len(starts)] = best.values.exp().tolist()
            if gold is not None:
                y = torch.tensor(gold[s][a : a + len(starts)])
                loss -= float(word_logp.gather(1, y[:, None]).sum())
                count += len(starts)
    model.train(was_training)
    return tags, probs, loss / count if count else math.nan


def score_sentences(model, encoder: WordEncoder, sentences: list[Sentence], device,
                    pieces: list[list[list[int]]] | None = None) -> dict:
    """Loss and entity-level scores of a tagger on tagged sentences."""
    labels = list(model.config.labels)
    index = {t: i for i, t in enumerate(labels)}
    pieces = pieces if pieces is not None else [encoder.pieces(s.words) for s in sentences]
    gold = [[index[t] for t in s.tags] for s in sentences]
    predicted, _, loss = tag_pieces(model, encoder, pieces, device, gold=gold)
    pred_tags = [[labels[i] for i in seq] for seq in predicted]
    return {"loss": loss, **entity_metrics([s.tags for s in sentences], pred_tags, scheme_of(labels))}


class NERTuner(TaskTrainer):
    """The training loop with CoNLL sentences instead of token shards, and dev-set entity scores."""

    selection = ("val_f1", "max")
    usage = "predict {run} --task ner --input texts.txt"

    def __init__(self, cfg: RunConfig, run_dir, tokenizer: Tokenizer, train: list[Sentence],
                 dev: list[Sentence] | None, backbone_state: dict | None, info: dict, progress: bool = True,
                 resume_from: Path | None = None):
        self.task_tokenizer, self.train_sentences, self.dev_sentences = tokenizer, train, dev
        self.backbone_state, self.info = backbone_state, info
        super().__init__(cfg, info["train"], run_dir, progress=progress, resume_from=resume_from)

    def _setup_data(self) -> None:
        m = self.cfg.model
        self.tokenizer = self.task_tokenizer
        m.vocab_size = self.tokenizer.vocab_size
        self.encoder = WordEncoder(self.tokenizer, m.backbone, m.block_size)
        index = {t: i for i, t in enumerate(m.labels)}
        rows = [self.encoder(s.words, [index[t] for t in s.tags]) for s in self.train_sentences]
        self.dev_pieces = [self.encoder.pieces(s.words) for s in self.dev_sentences or []]  # encoded once
        self.objective = TagObjective(rows, self.encoder, self.cfg.train.batch_size, self.cfg.train.group_by_length)
        self.data_size = f"{len(rows):,} training sentences"
        self.data_info = self.info

    def _build_model(self) -> torch.nn.Module:
        model = build_model(self.cfg.arch, self.cfg.model)
        load_backbone(model, self.backbone_state)
        return model

    def _validate(self) -> dict | None:
        if not self.dev_sentences:
            return None
        return score_sentences(self.model, self.encoder, self.dev_sentences, self.device, self.dev_pieces)

    def _data_card(self) -> list[str]:
        lines = [f"- task: ner; tags: {', '.join(self.cfg.model.labels)}",
                 f"- training file: `{self.info['train']}` ({len(self.train_sentences):,} sentences)"]
        if self.dev_sentences:
            lines.append(f"- dev file: `{self.info['dev']}` ({len(self.dev_sentences):,} sentences)")
        return lines


def _scratch_texts(sentences: list[Sentence]) -> list[Example]:
    """The training words a from-scratch tokenizer may know: those seen twice or more. Singletons are left to
    the unknown token, so that the model learns what to do with words it has never seen (most names)."""
    counts: dict[str, int] = {}
    for s in sentences:
        for w in s.words:
            counts[w] = counts.get(w, 0) + 1
    least = 2 if max(counts.values()) > 1 else 1  # a tiny file of distinct words keeps them all
    return [Example(" ".join(w for w in s.words if counts[w] >= least)) for s in sentences]


def finetune_ner(
    model: str,
    train: str | os.PathLike,
    out: str | os.PathLike,
    dev: str | os.PathLike | None = None,
    epochs: float = 3,
    max_examples: int | None = None,
    max_length: int = 128,
    batch_size: int = 32,
    lr: float | None = None,
    patience: int | None = None,
    max_minutes: float | None = None,
    seed: int = 0,
    overrides: dict | list[str] | None = None,
    progress: bool = True,
    resume: bool = False,
) -> RunResult:
    """Fine-tune a tagger on a CoNLL file (`max_examples`: its first N sentences); returns the run's result."""
    from lmforge.train import checkpoint as ckpt

    resume_from = ckpt.resume_point(out, resume)
    if epochs <= 0 or batch_size < 1 or max_length < 4:
        raise ConfigError("--epochs must be positive, --batch-size at least 1 and --max-length at least 4")
    train_sentences = read_conll(train, max_sentences=max_examples)
    dev_sentences = read_conll(dev) if dev else None
    labels = tag_set(train_sentences)
    if labels == ["O"]:
        raise DataError(f"{train} has no entity tags (every word is O); there is nothing to learn")
    if dev_sentences:
        check_tags(dev_sentences, labels, dev)
    texts = _scratch_texts(train_sentences) if model in SCRATCH else []
    arch, encoder_cfg, tokenizer, state, longest = _backbone(model, texts)
    scratch = state is None
    steps_per_epoch = math.ceil(len(train_sentences) / batch_size)
    steps = max(1, math.ceil(epochs * steps_per_epoch))
    cfg = RunConfig(
        arch="tagger",
        model=TaggerConfig(backbone=arch, encoder=encoder_cfg, labels=labels, block_size=min(max_length, longest)),
        optim=OptimConfig(lr=lr or (1e-3 if scratch else 5e-5), weight_decay=0.01, beta2=0.999,
                          warmup_steps=0 if scratch else steps // 10, schedule="linear", min_lr_ratio=0.0),
        train=TrainConfig(batch_size=batch_size, max_steps=steps, eval_every=max(1, min(steps_per_epoch, steps)),
                          max_minutes=max_minutes, patience=patience, seed=seed, keep_last=1, tensorboard=False),
    )
    for key, value in parse_overrides(overrides).items():
        set_dotted(cfg, key, value)
    cfg.model.validate()  # a GPT backbone is refused here, before any sentence is encoded
    info = {"task": "ner", "train": str(train), "dev": str(dev) if dev else None, "backbone": model}
    return NERTuner(cfg, out, tokenizer, train_sentences, dev_sentences, state, info, progress, resume_from).run()
