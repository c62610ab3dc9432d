"""Kim (2014)'s convolutional sentence encoder: word embeddings, convolutions of several widths (3, 4, 5 words x 100
feature maps) with ReLU; the classifier (models/classifier.py, backbone "cnn") max-pools each map over time, then
applies dropout (0.5) and a linear layer over the labels.

The embeddings start random (CNN-rand) or from word vectors (`finetune --vectors`: CNN-non-static, or CNN-static
with `--freeze-vectors`). Each width-h convolution is padded with h-1 zero vectors before the text, so position t
holds the window that ends at word t: every window with at least one word of a short text counts, and padding
positions are masked out of the max.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError


@dataclass
class CNNEncoderConfig:
    vocab_size: int = 20000
    n_embd: int = 300  # Kim used 300-dimensional word2vec vectors
    widths: list = field(default_factory=lambda: [3, 4, 5])  # filter widths, in words
    n_filters: int = 100  # feature maps per width

    def validate(self) -> None:
        if not self.widths or any(int(w) < 1 for w in self.widths):
            raise ConfigError(f"model.encoder.widths must be positive filter widths, got {self.widths}")
        for name in ("vocab_size", "n_embd", "n_filters"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.encoder.{name} must be >= 1, got {getattr(self, name)}")


class CNNEncoder(nn.Module):
    """Embeddings and parallel 1-D convolutions with ReLU: a (B, T, widths x n_filters) map of window features."""

    def __init__(self, cfg: CNNEncoderConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        nn.init.uniform_(self.tok_emb.weight, -0.25, 0.25)  # Kim's initialisation of unknown words
        self.convs = nn.ModuleList(nn.Conv1d(cfg.n_embd, cfg.n_filters, int(w)) for w in cfg.widths)
        self.width = cfg.n_filters * len(cfg.widths)

    def encode(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.tok_emb(idx)
        if attention_mask is not None:  # padding reads as zero vectors, like Kim's zero-padded sentences
            x = x * attention_mask.unsqueeze(-1).to(x.dtype)
        x = x.transpose(1, 2)  # (B, n_embd, T)
        maps = [F.relu(conv(F.pad(x, (conv.kernel_size[0] - 1, 0)))) for conv in self.convs]
        return torch.cat(maps, dim=1).transpose(1, 2)  # (B, T, width): position t = the window ending at t

    def flops_per_token(self) -> dict[str, int]:
        forward = 2 * sum(conv.weight.numel() for conv in self.convs)
        return {"forward": forward, "training": 3 * forward}
