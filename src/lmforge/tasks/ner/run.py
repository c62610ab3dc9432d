"""Fine-tuning for named-entity recognition: a tagger (a BERT checkpoint or a from-scratch BiLSTM/BiGRU plus a
per-token head) trained on CoNLL files by the one training loop (train/trainer.py).

    finetune_ner(model="minilm-ckpt", train="conll/train.txt", out="ner-run", dev="conll/valid.txt",
                 options=FineTuneOptions(epochs=3))

The best checkpoint is chosen by the dev set's entity-level F1 (seqeval, strict); early stopping with `patience`.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from lmforge import checkpoint as ckpt
from lmforge.errors import ConfigError, DataError
from lmforge.eval.ner import entity_metrics
from lmforge.models.modes import eval_mode
from lmforge.models.registry import build_model
from lmforge.models.tagger import TaggerConfig
from lmforge.tasks.common import (
    SCRATCH,
    FineTuneOptions,
    augment_info,
    augmented,
    backbone,
    finetune_config,
    finetune_spec,
    load_backbone,
)
from lmforge.tasks.ner.conll import Sentence, check_tags, read_conll, scheme_of, tag_set
from lmforge.tasks.ner.encoding import WordEncoder
from lmforge.tokenizers import Tokenizer
from lmforge.train.labels import IGNORE_INDEX
from lmforge.train.objectives import ShuffledEpochs
from lmforge.train.trainer import RunResult, RunSpec, Trainer


class TagObjective(ShuffledEpochs):
    """Shuffled epochs over the encoded training sentences; cross-entropy over the words' first sub-tokens."""

    name = "tag"

    def __init__(self, rows, encoder: WordEncoder, batch_size: int, group_by_length: bool = False):
        super().__init__(
            len(rows), batch_size, lengths=[len(r[0]) for r in rows] if group_by_length else None
        )
        self.rows, self.encoder = rows, encoder

    def next_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        chosen = self.next_indices(generator)
        return self.encoder.batch([self.rows[i] for i in chosen])

    @staticmethod
    def count_targets(batch) -> torch.Tensor:
        return (batch[2] != IGNORE_INDEX).sum()  # the loss is per word, whatever the words' sub-token counts

    def loss_sum(self, model, batch) -> torch.Tensor:
        ids, mask, labels = batch
        logits = model(ids, mask)
        return F.cross_entropy(
            logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )


@torch.no_grad()
def tag_pieces(
    model,
    encoder: WordEncoder,
    sentences: list[list[list[int]]],
    device,
    batch_size: int = 64,
    gold: list[list[int]] | None = None,
) -> tuple[list[list[int]], list[list[float]], float]:
    """(tag index per word, its probability, mean gold-tag loss or nan) for sentences given as each word's
    sub-token ids. A sentence longer than max_length is read in consecutive pieces of whole words."""
    with eval_mode(model):
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
    return tags, probs, loss / count if count else math.nan


def score_sentences(
    model,
    encoder: WordEncoder,
    sentences: list[Sentence],
    device,
    pieces: list[list[list[int]]] | None = None,
) -> dict:
    """Loss and entity-level scores of a tagger on tagged sentences."""
    labels = list(model.config.labels)
    index = {t: i for i, t in enumerate(labels)}
    pieces = pieces if pieces is not None else [encoder.pieces(s.words) for s in sentences]
    gold = [[index[t] for t in s.tags] for s in sentences]
    predicted, _, loss = tag_pieces(model, encoder, pieces, device, gold=gold)
    pred_tags = [[labels[i] for i in seq] for seq in predicted]
    return {"loss": loss, **entity_metrics([s.tags for s in sentences], pred_tags, scheme_of(labels))}


def ner_spec(
    cfg,
    run_dir,
    tokenizer: Tokenizer,
    train: list[Sentence],
    dev: list[Sentence] | None,
    backbone_state: dict | None,
    info: dict,
) -> RunSpec:
    """The run specification of a tagger fine-tune on CoNLL sentences, validated by dev entity scores."""
    m = cfg.model
    m.vocab_size = tokenizer.vocab_size
    encoder = WordEncoder(tokenizer, m.backbone, m.block_size)
    index = {t: i for i, t in enumerate(m.labels)}
    rows = [encoder(s.words, [index[t] for t in s.tags]) for s in train]
    dev_pieces = [encoder.pieces(s.words) for s in dev or []]  # encoded once
    objective = TagObjective(rows, encoder, cfg.train.batch_size, cfg.train.group_by_length)

    def build():
        model = build_model(cfg.arch, m)
        load_backbone(model, backbone_state)
        return model

    def validate(model, device, amp_dtype):
        return score_sentences(model, encoder, dev, device, dev_pieces) if dev else None

    card = [
        f"- task: ner; tags: {', '.join(m.labels)}",
        f"- training file: `{info['train']}` ({len(train):,} sentences)",
    ]
    if dev:
        card.append(f"- dev file: `{info['dev']}` ({len(dev):,} sentences)")
    return finetune_spec(
        cfg,
        run_dir,
        info,
        tokenizer=tokenizer,
        objective=objective,
        build_model=build,
        validate=validate,
        selection=("val_f1", "max"),
        data_size=f"{len(rows):,} training sentences",
        data_card=card,
        usage="predict {run} --task ner --input texts.txt",
    )


def scratch_texts(sentences: list[Sentence]) -> list[str]:
    """The training words a from-scratch tokenizer may know: those seen twice or more. Singletons are left to
    the unknown token, so that the model learns what to do with words it has never seen (most names)."""
    counts: dict[str, int] = {}
    for s in sentences:
        for w in s.words:
            counts[w] = counts.get(w, 0) + 1
    least = 2 if max(counts.values()) > 1 else 1  # a tiny file of distinct words keeps them all
    return [" ".join(w for w in s.words if counts[w] >= least) for s in sentences]


# The default batch: 32 sentences halve the optimizer steps of a small training set and lose to 16 (MiniLM on
# 3,000 CoNLL-2003 sentences, 2 epochs: entity F1 0.638 at 32, 0.775 at 16, benchmarks/RESULTS.md), while 16 also
# holds up on the whole set (MiniLM 0.895, BiLSTM 0.809 at 16 on all 14,041 sentences, RESULTS.md).
NER_BATCH_SIZE = 16


def finetune_ner(
    model: str,
    train: str | os.PathLike,
    out: str | os.PathLike,
    dev: str | os.PathLike | None = None,
    options: FineTuneOptions | None = None,
    max_examples: int | None = None,
    max_length: int = 128,
    progress: bool = True,
    resume: bool = False,
) -> RunResult:
    """Fine-tune a tagger on a CoNLL file (`max_examples`: its first N sentences); returns the run's result."""
    options = options or FineTuneOptions()
    resume_from = ckpt.resume_point(out, resume)
    if not options.epochs > 0 or (options.batch_size or 1) < 1 or max_length < 4:
        raise ConfigError("--epochs must be positive, --batch-size at least 1 and --max-length at least 4")
    read = read_conll(train, max_sentences=max_examples)
    train_sentences = augmented(read, options.augment)  # never dev
    dev_sentences = read_conll(dev) if dev else None
    labels = tag_set(train_sentences)
    if labels == ["O"]:
        raise DataError(f"{train} has no entity tags (every word is O); there is nothing to learn")
    if dev_sentences:
        check_tags(dev_sentences, labels, dev)
    base = backbone(model, scratch_texts(train_sentences) if model in SCRATCH else [])
    scratch = base.state is None
    model_cfg = TaggerConfig(
        backbone=base.arch, encoder=base.config, labels=labels, block_size=min(max_length, base.longest)
    )
    cfg = finetune_config(
        "tagger",
        model_cfg,
        len(train_sentences),
        options,
        options.lr or (1e-3 if scratch else 5e-5),
        warmup=not scratch,
        batch_size=NER_BATCH_SIZE,
    )
    cfg.model.validate()  # a GPT backbone is refused here, before any sentence is encoded
    info = {"task": "ner", "train": str(train), "dev": str(dev) if dev else None, "backbone": model}
    info.update(augment_info(options.augment, len(read), len(train_sentences)))
    spec = ner_spec(cfg, out, base.tokenizer, train_sentences, dev_sentences, base.state, info)
    options.attach(spec)  # a caller's hooks (lmforge tune's pruning and Ctrl-C hint)
    return Trainer(cfg, spec, out, progress=progress, resume_from=resume_from).run()
