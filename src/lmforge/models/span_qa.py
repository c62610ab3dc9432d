"""Extractive question answering: a BERT-style encoder reads `[bos] question [eos] context [eos]` and a linear head
scores every token as the answer's start and as its end (Devlin et al., 2019, the SQuAD set-up)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lmforge.errors import ConfigError
from lmforge.models.registry import build_model


@dataclass
class SpanQAConfig:
    backbone: str = "bert"
    encoder: dict = field(default_factory=dict)  # the backbone's BertConfig fields
    block_size: int = 384  # question + context window, in tokens
    doc_stride: int = 128  # overlap between consecutive windows of a long context
    max_answer_tokens: int = 30
    vocab_size: int = 0

    objective = "span"

    def validate(self) -> None:
        if self.backbone != "bert":
            raise ConfigError(
                "extractive QA needs a bidirectional (bert) backbone: an answer's start depends on "
                "the words after it"
            )
        if not 0 < self.doc_stride < self.block_size:
            raise ConfigError(f"doc_stride must be between 1 and block_size - 1, got {self.doc_stride}")
        if self.max_answer_tokens < 1:
            raise ConfigError("max_answer_tokens must be at least 1")


class SpanQA(nn.Module):
    def __init__(self, cfg: SpanQAConfig):
        super().__init__()
        cfg.validate()

        self.config = cfg
        self.backbone = build_model("bert", dict(cfg.encoder))
        self.head = nn.Linear(self.backbone.config.n_embd, 2)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """Start and end logits, (B, T, 2)."""
        return self.head(self.backbone.encode(input_ids, attention_mask, token_type_ids))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> dict[str, int]:
        return self.backbone.flops_per_token()
