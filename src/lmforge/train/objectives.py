"""Training objectives: how a batch is drawn and scored. The trainer loop is the same for all of them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data.shards import TokenShards

IGNORE_INDEX = -100


class CausalLM:
    """Next-token prediction on random windows of the token stream (GPT-style pretraining)."""

    name = "clm"

    def __init__(self, data: TokenShards, block_size: int, batch_size: int):
        data.check_block_size(block_size)
        self.data, self.block_size, self.batch_size = data, block_size, batch_size

    def next_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.sample_batch(self.batch_size, self.block_size, generator)

    @staticmethod
    def count_targets(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return (batch[1] != IGNORE_INDEX).sum()

    @staticmethod
    def loss_sum(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Summed (not averaged) token loss, so accumulated micro-batches normalise over all their tokens."""
        x, y = batch
        logits = model(x)
        return F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
