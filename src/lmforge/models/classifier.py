"""Sequence classification: a backbone that reads the text, a pooling step, and a linear head over the labels.

Backbones: a BERT-style encoder (ours or an imported one such as MiniLM; pooled by its pooler on the first
token, or by a mean), a GPT decoder (pooled at the last real token, the only one that has read the whole text), a
bidirectional LSTM/GRU trained from scratch (max-pooled over time, the articles' RNN text classifier), or Kim's CNN
(models/cnn.py: its feature maps max-pooled over time). Text pairs
(NLI) are one sequence with a separator; the BERT backbone also gets segment ids.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from lmforge.errors import ConfigError
from lmforge.models.cnn import CNNEncoder, CNNEncoderConfig
from lmforge.models.registry import build_model

BACKBONES = ("bert", "gpt", "lstm", "gru", "cnn")
DEFAULT_POOLING = {"bert": "cls", "gpt": "last", "lstm": "max", "gru": "max", "cnn": "max"}


@dataclass
class RNNEncoderConfig:
    cell: str = "lstm"
    vocab_size: int = 20000
    n_embd: int = 128
    n_hidden: int = 128
    n_layer: int = 1
    bidirectional: bool = True
    dropout: float = 0.2


class RNNEncoder(nn.Module):
    """Embeddings and a (bi)directional LSTM/GRU: a token vector per position, from both sides."""

    def __init__(self, cfg: RNNEncoderConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        rnn = nn.LSTM if cfg.cell == "lstm" else nn.GRU
        self.rnn = rnn(
            cfg.n_embd,
            cfg.n_hidden,
            cfg.n_layer,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.n_layer > 1 else 0.0,
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.width = cfg.n_hidden * (2 if cfg.bidirectional else 1)

    def encode(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.drop(self.tok_emb(idx))
        if (
            attention_mask is not None
        ):  # packed, so the backward direction starts at each text's own last token
            lengths = attention_mask.sum(1).clamp(min=1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, _ = self.rnn(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=idx.shape[1])
            return out
        return self.rnn(x)[0]


@dataclass
class ClassifierConfig:
    backbone: str = "bert"  # bert | gpt | lstm | gru | cnn
    encoder: dict = field(
        default_factory=dict
    )  # the backbone's own config (BertConfig / GPTConfig / RNN sizes)
    labels: list = field(default_factory=list)  # label names, in the order of the head's outputs
    multi_label: bool = False  # independent yes/no per label (sigmoid) instead of one of them (softmax)
    pooling: str = "auto"  # cls | mean | last | max (auto: cls for bert, last for gpt, max for lstm/gru)
    dropout: float = 0.1
    block_size: int = 128  # longest input, in tokens (texts are truncated to it)
    vocab_size: int = 0  # set from the tokenizer
    stem: str = ""  # Snowball language whose stems the text is read as (finetune --stem), "" for none
    # A BERT backbone computes on the batch's real tokens only, not its padding (models/bert.py): the same
    # logits, less work. false pads as before (its dropout masks are drawn over the padding too).
    unpad: bool = True

    objective = "classify"

    @property
    def pool(self) -> str:
        return DEFAULT_POOLING[self.backbone] if self.pooling == "auto" else self.pooling

    def validate(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"model.backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        if len(self.labels) < (1 if self.multi_label else 2):
            raise ConfigError(f"a classifier needs at least two labels, the data has {len(self.labels)}")
        if self.pooling not in ("auto", "cls", "mean", "last", "max"):
            raise ConfigError(f"model.pooling must be auto, cls, mean, last or max, got {self.pooling!r}")
        if self.pool == "cls" and self.backbone != "bert":
            raise ConfigError("pooling 'cls' needs a BERT-style backbone; use mean, last or max")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")


def encoder_config(config_cls, cfg) -> object:
    """A from-scratch backbone's config from `cfg.encoder`, whose unknown keys (a typo on the command line's
    --model.encoder) are one clear error."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(cfg.encoder) - known)
    if unknown:
        raise ConfigError(
            f"unknown model.encoder key(s) {', '.join(unknown)} for a {cfg.backbone} backbone; "
            f"known: {', '.join(sorted(known - {'cell', 'vocab_size'}))}"
        )
    return config_cls(**{**cfg.encoder, "vocab_size": cfg.vocab_size})


def build_backbone(cfg: ClassifierConfig) -> nn.Module:
    if cfg.backbone in ("lstm", "gru"):
        enc = encoder_config(RNNEncoderConfig, cfg)
        enc.cell = cfg.backbone
        return RNNEncoder(enc)
    if cfg.backbone == "cnn":  # Kim 2014 (models/cnn.py)
        return CNNEncoder(encoder_config(CNNEncoderConfig, cfg))
    return build_model(cfg.backbone, dict(cfg.encoder))


class BackboneWithHead(nn.Module):
    """A backbone that reads the tokens and a linear head over `config.labels` (classifiers and taggers)."""

    def __init__(self, cfg):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.backbone = build_backbone(cfg)
        width = getattr(self.backbone, "width", None) or self.backbone.config.n_embd
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(width, len(cfg.labels))
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def hidden(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        if self.config.backbone == "bert":
            unpad = getattr(self.config, "unpad", False)
            return self.backbone.encode(input_ids, attention_mask, token_type_ids, unpad=unpad)
        if self.config.backbone == "gpt":
            return self.backbone.encode(input_ids)  # causal: right padding never reaches the real tokens
        return self.backbone.encode(input_ids, attention_mask)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> dict[str, int]:
        if hasattr(self.backbone, "flops_per_token"):
            return self.backbone.flops_per_token()
        # the recurrent encoder: its matrices, read once per token
        forward = 2 * sum(p.numel() for n, p in self.backbone.rnn.named_parameters() if "weight" in n)
        return {"forward": forward, "training": 3 * forward}


class Classifier(BackboneWithHead):
    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """Label logits (B, labels)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.hidden(input_ids, attention_mask, token_type_ids)
        return self.head(self.drop(self.pooled(hidden, attention_mask)))

    def pooled(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pool, m = self.config.pool, mask.unsqueeze(-1).to(hidden.dtype)
        if pool == "cls":
            return self.backbone.pool(hidden)
        if pool == "mean":
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        if pool == "max":
            return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(1).values
        last = mask.sum(1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
