"""Recurrent language models: Elman RNN, LSTM and GRU (PyTorch's cuDNN-compatible modules).

Trained with truncated back-propagation through time: the trainer feeds consecutive `block_size`-token chunks of
`batch_size` parallel streams and carries the hidden state from one chunk to the next (objectives.TBPTT).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError
from lmforge.models.modes import eval_mode


@dataclass
class RNNConfig:
    cell: str = "rnn"  # rnn | lstm | gru
    vocab_size: int = 10000  # set from the tokenizer when training
    n_embd: int = 200
    n_hidden: int = 200
    n_layer: int = 2
    dropout: float = 0.0  # on the embeddings, between layers and before the output layer (Zaremba et al.)
    tie_embeddings: bool = False  # needs n_embd == n_hidden
    block_size: int = 35  # the truncated-BPTT length

    objective = "tbptt"  # trained with carried hidden state (objectives.TBPTT)

    def validate(self) -> None:
        if self.cell not in ("rnn", "lstm", "gru"):
            raise ConfigError(f"model.cell must be one of rnn, lstm, gru, got {self.cell!r}")
        for name in ("vocab_size", "n_embd", "n_hidden", "n_layer", "block_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.tie_embeddings and self.n_embd != self.n_hidden:
            raise ConfigError("model.tie_embeddings needs model.n_embd == model.n_hidden")


@dataclass
class LSTMConfig(RNNConfig):
    cell: str = "lstm"


@dataclass
class GRUConfig(RNNConfig):
    cell: str = "gru"


class RNNLM(nn.Module):
    def __init__(self, cfg: RNNConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        module = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cfg.cell]
        self.rnn = module(
            cfg.n_embd,
            cfg.n_hidden,
            cfg.n_layer,
            batch_first=True,
            dropout=cfg.dropout if cfg.n_layer > 1 else 0.0,
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.lm_head = nn.Linear(cfg.n_hidden, cfg.vocab_size)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        # Zaremba et al.: every weight uniform in [-0.1, 0.1].
        for p in self.parameters():
            nn.init.uniform_(p, -0.1, 0.1)

    def forward_with_state(self, idx: torch.Tensor, state=None):
        """(logits (B, T, vocab), the hidden state after the last token) from token ids (B, T)."""
        out, state = self.rnn(self.drop(self.tok_emb(idx)), state)
        return self.lm_head(self.drop(out)), state

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.forward_with_state(idx)[0]

    @staticmethod
    def detach_state(state):
        if state is None:
            return None
        return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()

    @torch.no_grad()
    def score_stream(self, tokens: np.ndarray) -> tuple[float, int]:
        """(nats, tokens predicted) of a token stream read in order, the state carried from chunk to chunk."""
        with eval_mode(self):
            device = next(self.parameters()).device
            stream = torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=device)
            total, state = 0.0, None
            for start in range(0, stream.numel() - 1, self.config.block_size):
                chunk = stream[start : start + self.config.block_size + 1]
                logits, state = self.forward_with_state(chunk[None, :-1], state)
                total += float(F.cross_entropy(logits[0].float(), chunk[1:], reduction="sum"))
        return total, max(stream.numel() - 1, 0)

    @torch.no_grad()
    def next_token_logits(self, seq: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab) after reading the whole sequence (generation; the state makes the context)."""
        return self.forward_with_state(seq)[0][:, -1]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> dict[str, int]:
        matmul = (
            sum(p.numel() for n, p in self.rnn.named_parameters() if "weight" in n)
            + self.lm_head.weight.numel()
        )
        return {"forward": 2 * matmul, "training": 6 * matmul}
