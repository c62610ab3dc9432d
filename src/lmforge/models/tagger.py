"""Token classification (named-entity recognition): a backbone that reads the sentence and a linear head that
tags every token.

Backbones: a BERT-style encoder (ours or an imported one such as MiniLM) or a bidirectional LSTM/GRU trained from
scratch (the classic BiLSTM tagger, without its CRF). A GPT decoder is refused: each of its positions has read only
the words to its left, and a word's tag depends on the words after it as much ("Paris Hilton" vs "Paris is").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmforge.errors import ConfigError
from lmforge.models.classifier import BackboneWithHead

BACKBONES = ("bert", "lstm", "gru")


@dataclass
class TaggerConfig:
    backbone: str = "bert"  # bert | lstm | gru
    encoder: dict = field(default_factory=dict)  # the backbone's own config (BertConfig / RNN sizes)
    labels: list = field(
        default_factory=list
    )  # the tag set (O, B-PER, I-PER, ...), in the head's output order
    dropout: float = 0.1
    block_size: int = 128  # longest input, in tokens (longer sentences are read in pieces of whole words)
    vocab_size: int = 0  # set from the tokenizer
    unpad: bool = True  # a BERT backbone skips the padding (as ClassifierConfig.unpad)

    objective = "tag"

    def validate(self) -> None:
        if self.backbone == "gpt":
            raise ConfigError(
                "a GPT backbone reads left to right and cannot see the words after a token; "
                "tag entities with a bert checkpoint or lstm/gru"
            )
        if self.backbone not in BACKBONES:
            raise ConfigError(f"model.backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        if len(self.labels) < 2:
            raise ConfigError(f"a tagger needs at least two tags, the data has {len(self.labels)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")


class Tagger(BackboneWithHead):
    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """Tag logits (B, T, tags)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.head(self.drop(self.hidden(input_ids, attention_mask, token_type_ids)))
