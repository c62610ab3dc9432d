"""Training objectives: how a batch is drawn and scored. The trainer loop is the same for all of them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data.shards import TokenShards
from lmforge.errors import DataError

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

    def state_dict(self) -> dict:
        return {}  # the random windows' position is the trainer's data generator

    def load_state_dict(self, d: dict, device: torch.device) -> None:
        pass

    @staticmethod
    def loss_sum(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Summed (not averaged) token loss, so accumulated micro-batches normalise over all their tokens."""
        x, y = batch
        logits = model(x)
        return F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )


class TBPTT:
    """Truncated back-propagation through time for recurrent models.

    The training tokens are cut into `batch_size` parallel streams; each batch is the next `block_size` tokens
    of every stream, and the hidden state left by one batch starts the next (detached, so gradients stop at the
    chunk boundary). An epoch ends when the streams are used up; the state then starts from zero again.
    """

    name = "tbptt"

    def __init__(self, data: TokenShards, block_size: int, batch_size: int):
        stream = np.concatenate([np.asarray(a) for a in data.arrays])
        width = (stream.size - 1) // batch_size
        if width < block_size + 1:
            raise DataError(
                f"the {data.split} split has {stream.size} tokens: too few for {batch_size} streams of at least "
                f"block_size + 1 = {block_size + 1} tokens; use a smaller --model.block_size or --train.batch_size"
            )
        self.inputs = stream[: width * batch_size].reshape(batch_size, width)
        self.targets = stream[1 : width * batch_size + 1].reshape(batch_size, width)
        self.block_size, self.batch_size = block_size, batch_size
        self.pos = 0
        self.state = None

    def next_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos + 1 >= self.inputs.shape[1]:  # a new epoch
            self.pos, self.state = 0, None
        end = min(self.pos + self.block_size, self.inputs.shape[1])
        x = torch.from_numpy(self.inputs[:, self.pos : end].astype(np.int64))
        y = torch.from_numpy(self.targets[:, self.pos : end].astype(np.int64))
        self.pos = end
        return x, y

    count_targets = staticmethod(CausalLM.count_targets)

    def loss_sum(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        logits, state = model.forward_with_state(x, self.state)
        self.state = model.detach_state(state)
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")

    # The stream position and the carried state are part of the data position a resumed run restores.
    def state_dict(self) -> dict:
        state = self.state
        if state is not None:
            state = tuple(s.cpu() for s in state) if isinstance(state, tuple) else state.cpu()
        return {"pos": self.pos, "state": state}

    def load_state_dict(self, d: dict, device: torch.device) -> None:
        if not d:
            return
        self.pos = d["pos"]
        state = d["state"]
        if state is not None:
            state = tuple(s.to(device) for s in state) if isinstance(state, tuple) else state.to(device)
        self.state = state
