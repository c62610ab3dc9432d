"""Training objectives: how a batch is drawn and scored. The trainer loop is the same for all of them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data.shards import TokenShards
from lmforge.errors import DataError
from lmforge.tokenizers import Tokenizer

IGNORE_INDEX = -100


class CausalLM:
    """Next-token prediction on random windows of the token stream (GPT-style pretraining)."""

    name = "clm"

    def __init__(self, data: TokenShards, model_cfg, batch_size: int, tokenizer: Tokenizer | None = None):
        data.check_block_size(model_cfg.block_size)
        self.data, self.block_size, self.batch_size = data, model_cfg.block_size, batch_size

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

    def __init__(self, data: TokenShards, model_cfg, batch_size: int, tokenizer: Tokenizer | None = None):
        block_size = model_cfg.block_size
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


class MaskedLM:
    """BERT-style masked language modelling on random windows of the token stream.

    Each window starts with the beginning-of-sequence token (the position sentence-level heads later read) and is
    corrupted by `Masker`: mask_prob of the tokens (or whole words) are chosen, 80% replaced by the mask token, 10%
    by a random token, 10% kept; only the chosen ones are scored.
    """

    name = "mlm"

    def __init__(self, data: TokenShards, model_cfg, batch_size: int, tokenizer: Tokenizer):
        from lmforge.train.masking import Masker

        if tokenizer.mask_id is None:
            raise DataError("masked-LM training needs a tokenizer with a mask token (<|mask|>); prepare the data again")
        self.bos = tokenizer.bos_id
        self.body = model_cfg.block_size - (self.bos is not None)
        data.check_block_size(self.body)
        self.data, self.batch_size = data, batch_size
        self.masker = Masker(tokenizer, model_cfg.mask_prob, model_cfg.whole_word_mask)

    def with_bos(self, x: torch.Tensor) -> torch.Tensor:
        if self.bos is None:
            return x
        return torch.cat([torch.full((x.shape[0], 1), self.bos, dtype=x.dtype), x], dim=1)

    def next_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = self.data.sample_batch(self.batch_size, self.body, generator)
        return self.masker(self.with_bos(x), generator)

    count_targets = staticmethod(CausalLM.count_targets)
    loss_sum = staticmethod(CausalLM.loss_sum)
    state_dict = CausalLM.state_dict
    load_state_dict = CausalLM.load_state_dict


OBJECTIVES = {"clm": CausalLM, "tbptt": TBPTT, "mlm": MaskedLM}


def build_objective(model_cfg, data: TokenShards, batch_size: int, tokenizer: Tokenizer):
    """The training objective an architecture declares (its config class's `objective`, "clm" by default)."""
    return OBJECTIVES[getattr(model_cfg, "objective", "clm")](data, model_cfg, batch_size, tokenizer)
