"""A BERT-style Transformer encoder, pretrained with masked language modelling.

The layout follows the original BERT (and Hugging Face's `BertModel`) so that BERT-family checkpoints such as MiniLM
map onto it weight for weight: word + position + token-type embeddings, a LayerNorm after the embeddings, post-LN
blocks (attention → add → LayerNorm, feed-forward → add → LayerNorm), exact GELU, a pooler (dense + tanh on the
first token) for sentence-level heads, and an MLM head (dense → GELU → LayerNorm → vocabulary, tied to the word
embeddings). Attention is bidirectional; padding positions are masked out of every softmax.

RoBERTa and XLM-R are the same network with two differences in the embeddings, both options here: positions that
count real tokens only and start after the padding index (`position_offset` = padding index + 1), and a single
token type (`type_vocab_size` 1: segment ids are ignored, as RoBERTa was pretrained without them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.device import coarse_size
from lmforge.errors import ConfigError


@dataclass
class BertConfig:
    vocab_size: int = 8192  # set from the tokenizer when training
    block_size: int = 128  # maximum sequence length (learned positions)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    mlp_hidden: int | None = None  # default: 4 * n_embd
    dropout: float = 0.1
    type_vocab_size: int = 2  # segment (sentence A / B) embeddings
    norm_eps: float = 1e-12
    tie_embeddings: bool = True
    # RoBERTa / XLM-R: 2 (= the padding index + 1). Real tokens take positions offset, offset + 1, ... counted over
    # the attention mask, padding takes offset - 1; the position table holds block_size + offset rows.
    position_offset: int = 0
    # Masked-language-model pretraining (objectives.MaskedLM): which tokens are hidden and how.
    mask_prob: float = 0.15  # share of tokens selected for prediction
    whole_word_mask: bool = False  # select whole words (jieba word boundaries; also splits Chinese text)

    objective = "mlm"
    bidirectional = True  # an encoder: it fills in masked tokens, it does not continue text

    @property
    def hidden(self) -> int:
        return self.mlp_hidden or 4 * self.n_embd

    def validate(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "type_vocab_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.position_offset < 0:
            raise ConfigError(f"model.position_offset must be >= 0, got {self.position_offset}")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if not 0 < self.mask_prob < 1:
            raise ConfigError(f"model.mask_prob must be in (0, 1), got {self.mask_prob}")


class EncoderLayer(nn.Module):
    """Post-LN Transformer encoder block, as in BERT."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv_proj = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.o_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.attn_norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.hidden)
        self.down_proj = nn.Linear(cfg.hidden, cfg.n_embd)
        self.mlp_norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.dropout = cfg.dropout
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        need_weights: bool = False,
        unpadded: tuple[torch.Tensor, int, int] | None = None,
    ):
        """x (B, T, C); or, with `unpadded` = (index, B, T), only the rows (N, C) at `index` of the flattened (B * T)
        batch (the real tokens, then a few padding positions: unpad_rows): projections, norms and MLP then skip the
        rest of the padding, attention alone sees it."""
        qkv = self.qkv_proj(x)
        if unpadded is not None:
            index, B, T = unpadded
            # In place into fresh zeros: the out-of-place index_copy would first clone them.
            qkv = qkv.new_zeros(B * T, qkv.shape[-1]).index_copy_(0, index, qkv).view(B, T, -1)
        B, T, C = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in qkv.split(C, -1))
        weights = None
        if need_weights:  # explicit softmax, so the attention map can be returned (interpretability)
            scores = q @ k.transpose(-2, -1) / math.sqrt(C // self.n_head)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            weights = scores.softmax(-1)
            y = weights @ v
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
            )
        y = y.transpose(1, 2).reshape(B, T, C)
        if unpadded is not None:
            y = y.view(B * T, C).index_select(0, unpadded[0])
        x = self.attn_norm(x + self.drop(self.o_proj(y)))
        h = self.down_proj(F.gelu(self.up_proj(x)))
        return self.mlp_norm(x + self.drop(h)), weights


# An unpadded batch's row count is rounded up to one of this many sizes per power of two (a power of two itself;
# 0 turns the rounding off), taking in a few padding positions (at most 1/16 more rows; device.coarse_size says
# why). MiniLM on 4,000
# SST-2 phrases, batch 32, length 64, bf16 autocast on the AMX Xeon: exact counts 30.8-31.7 s of training at
# 2,182-2,215 MB peak RSS; 16 sizes an octave 24.3-26.8 s at 1,379-1,398 MB; fp32 31.6-32.9 s either way, 1,345-1,375
# against 1,176-1,200 MB (RESULTS.md, "Unpadded row counts").
UNPAD_STEPS_PER_OCTAVE = 16


def unpad_rows(n: int) -> int:
    """n rounded up to the next of UNPAD_STEPS_PER_OCTAVE evenly spaced sizes between two powers of two."""
    return coarse_size(n, UNPAD_STEPS_PER_OCTAVE) if UNPAD_STEPS_PER_OCTAVE > 0 else n


class Bert(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size + cfg.position_offset, cfg.n_embd)
        self.type_emb = nn.Embedding(cfg.type_vocab_size, cfg.n_embd)
        self.emb_norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layer))
        self.pooler = nn.Linear(cfg.n_embd, cfg.n_embd)
        # MLM head: transform, then project onto the vocabulary (tied to the word embeddings) with its own bias.
        self.mlm_dense = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.mlm_norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # BERT's initialisation: N(0, 0.02) for every matrix and embedding, zero biases, unit LayerNorm gains.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def encode(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_attentions: bool = False,
        unpad: bool = False,
    ):
        """Contextual token vectors (B, T, n_embd); with output_attentions, also each layer's (B, H, T, T) map.

        attention_mask (B, T) is 1 for real tokens and 0 for padding, which no token attends to. unpad=True
        computes everything but attention on the real tokens only (the same vectors; padding positions come back
        as zeros): a fine-tuning batch padded to its longest example is often two-thirds padding.
        """
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than block_size {self.config.block_size}")
        # (B, T), not (T,) broadcast: per-example gradients (DP-SGD, train/privacy.py) need the batch dimension
        positions = torch.arange(T, device=idx.device).expand(B, T)
        offset = self.config.position_offset
        if offset:  # RoBERTa: real tokens count from `offset`, padding sits at offset - 1 (its padding index)
            real = attention_mask.long() if attention_mask is not None else torch.ones_like(idx)
            positions = torch.cumsum(real, 1) * real + (offset - 1)
        one_type = token_type_ids is None or self.config.type_vocab_size == 1  # RoBERTa has no segment ids
        types = torch.zeros_like(idx) if one_type else token_type_ids
        x = self.tok_emb(idx) + self.pos_emb(positions) + self.type_emb(types)
        mask, unpadded = None, None
        if attention_mask is not None:
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): broadcast over heads and queries
            # Not under torch.compile / ONNX export: the real-token count is data-dependent there.
            if unpad and not output_attentions and not torch.compiler.is_compiling():
                real = attention_mask.reshape(-1).bool()
                index = real.nonzero().squeeze(1)
                n_real = index.numel()
                if n_real < B * T:  # a batch without padding runs as it is
                    rows = min(B * T, unpad_rows(n_real))
                    if rows > n_real:  # a few padding positions too, so the row count comes from a short list
                        index = torch.cat([index, (~real).nonzero().squeeze(1)[: rows - n_real]])
                    unpadded = (index, B, T)
                    x = x.reshape(B * T, -1).index_select(0, index)
        x = self.drop(self.emb_norm(x))
        maps = []
        for layer in self.layers:
            x, weights = layer(x, mask, need_weights=output_attentions, unpadded=unpadded)
            maps.append(weights)
        if unpadded is not None:
            x = x.new_zeros(B * T, x.shape[-1]).index_copy_(0, index[:n_real], x[:n_real]).view(B, T, -1)
        return (x, maps) if output_attentions else x

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """The sentence vector of BERT's classification heads: tanh(dense(first token))."""
        return torch.tanh(self.pooler(hidden[:, 0]))

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.mlm_norm(F.gelu(self.mlm_dense(hidden))))

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None, token_type_ids=None):
        """Masked-LM logits (B, T, vocab)."""
        return self.mlm_logits(self.encode(idx, attention_mask, token_type_ids))

    # ---- accounting ------------------------------------------------------------------------------
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> dict[str, int]:
        """Matmul FLOPs per token at full length: every weight matrix (the MLM head included) and attention."""
        cfg = self.config
        matmul_params = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        matmul_params -= self.pooler.weight.numel()  # used once per sequence, not per token
        attention = 2 * 2 * cfg.n_layer * cfg.block_size * cfg.n_embd
        forward = 2 * matmul_params + attention
        return {"forward": forward, "training": 3 * forward}
