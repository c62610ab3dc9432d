"""The n-gram model as an architecture: `lmforge pretrain --arch ngram` fits it, and it checkpoints, evaluates and
generates through the same code as the neural models (a module whose state is the n-gram tables)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lmforge.errors import ConfigError
from lmforge.models.ngram import NGramLM


@dataclass
class NGramConfig:
    order: int = 5
    vocab_size: int = 0  # set from the tokenizer when fitting
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    block_size: int = 256  # the longest context generation and window evaluation pass in (only order-1 count)

    statistical = True  # fitted by counting in one pass, not by the gradient loop

    def validate(self) -> None:
        if self.order < 1:
            raise ConfigError(f"model.order must be >= 1, got {self.order}")
        if self.block_size < 1:
            raise ConfigError(f"model.block_size must be >= 1, got {self.block_size}")


class NGram(nn.Module):
    """Interpolated modified Kneser-Ney n-gram model (see models/ngram.py) behind the module interface."""

    def __init__(self, cfg: NGramConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.lm: NGramLM | None = None

    @classmethod
    def fit(cls, cfg: NGramConfig, streams: list[np.ndarray]) -> NGram:
        model = cls(cfg)
        model.lm = NGramLM.fit(
            streams,
            cfg.order,
            cfg.vocab_size,
            cfg.bos_id if cfg.bos_id is not None else cfg.eos_id,
            cfg.eos_id,
            cfg.unk_id,
        )
        return model

    def _lm_config(self) -> dict:
        c = self.config
        return {
            "order": c.order,
            "vocab_size": c.vocab_size,
            "eos_id": c.eos_id,
            "unk_id": c.unk_id,
            "bos_id": c.bos_id if c.bos_id is not None else c.eos_id,
        }

    # The tables are the state: they go to model.safetensors like any weights.
    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.lm.state_dict().items()}

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        self.lm = NGramLM.from_state_dict({k: v.numpy() for k, v in state.items()}, self._lm_config())
        return [], []

    # ---- what evaluation and generation call ---------------------------------------------------------------
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (B, T, vocab) of the next token at every position; each row starts a sentence."""
        rows = idx.tolist()
        out = np.empty((len(rows), len(rows[0]), self.config.vocab_size), dtype=np.float32)
        for b, row in enumerate(rows):
            for t in range(len(row)):
                out[b, t] = self.lm.next_logprobs(row[: t + 1])
        return torch.from_numpy(out).to(idx.device)

    def next_token_logits(self, seq: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (B, vocab) of the token after each sequence (only its last order-1 tokens matter)."""
        rows = [self.lm.next_logprobs(row) for row in seq.tolist()]
        return torch.from_numpy(np.stack(rows).astype(np.float32)).to(seq.device)

    def score_stream(self, tokens: np.ndarray) -> tuple[float, int]:
        """(nats, tokens predicted) of an eos-separated token stream, scored with full sentence contexts."""
        return self.lm.score(np.asarray(tokens))

    def num_params(self) -> int:
        return 0 if self.lm is None else 2 * sum(self.lm.num_ngrams)

    def flops_per_token(self) -> dict[str, int]:
        return {"forward": 0, "training": 0}  # table look-ups, no multiply-adds
