"""The GPT decoder: one implementation, configurable as GPT-2 style or Llama style.

GPT-2 style: learned positions, LayerNorm, GELU (exact; `gelu_tanh` is GPT-2's own approximation), biases.  Llama style: rotary positions (RoPE), RMSNorm, SwiGLU,
grouped-query attention, no biases.  Both use `scaled_dot_product_attention` and a KV cache for generation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lmforge.errors import ConfigError
from lmforge.models.layers import MLP, CausalSelfAttention, KVCache, make_norm, rope_tables


@dataclass
class GPTConfig:
    vocab_size: int = 8192  # set from the tokenizer when training
    block_size: int = 256  # context length
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # grouped-query attention: fewer key/value heads (default: n_head)
    n_embd: int = 128
    mlp_hidden: int | None = None  # default: 4 * n_embd (GELU) or the Llama size for SwiGLU
    head_dim: int | None = None  # default: n_embd / n_head; set when heads were pruned and n_embd kept
    dropout: float = 0.0
    bias: bool = True
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    activation: str = "gelu"  # gelu (exact) | gelu_tanh (GPT-2's approximation) | swiglu
    position: str = "learned"  # learned | rope
    rope_theta: float = 10000.0
    tie_embeddings: bool = True

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_size(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    @property
    def hidden(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.activation == "swiglu":  # 2/3 of 4d keeps the parameter count of a GELU MLP, rounded to 32
            return 32 * math.ceil(int(8 * self.n_embd / 3) / 32)
        return 4 * self.n_embd

    def validate(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.head_dim is None and self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )
        if self.n_head % self.kv_heads:
            raise ConfigError(
                f"model.n_head ({self.n_head}) must be divisible by model.n_kv_head ({self.kv_heads})"
            )
        if self.head_dim is not None and self.head_dim < 1:
            raise ConfigError(f"model.head_dim must be >= 1, got {self.head_dim}")
        if self.position == "rope" and self.head_size % 2:
            raise ConfigError("rotary positions need an even head size (model.n_embd / model.n_head)")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        for key, value, choices in (
            ("norm", self.norm, ("layernorm", "rmsnorm")),
            ("activation", self.activation, ("gelu", "gelu_tanh", "swiglu")),
            ("position", self.position, ("learned", "rope")),
        ):
            if value not in choices:
                raise ConfigError(f"model.{key} must be one of {', '.join(choices)}, got {value!r}")


def segment_positions_and_mask(segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions counted from each document's first token, and the (B, 1, T, T) block-diagonal causal mask, of
    packed rows whose tokens carry a document number (B, T); consecutive tokens with one number are one document."""
    B, T = segments.shape
    index = torch.arange(T, device=segments.device).expand(B, T)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    first = torch.where(starts, index, 0).cummax(dim=-1).values
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    same = segments[:, :, None] == segments[:, None, :]
    return index - first, (causal & same)[:, None]


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.attn_norm = make_norm(cfg.norm, cfg.n_embd, cfg.norm_eps, cfg.bias)
        self.attn = CausalSelfAttention(
            cfg.n_embd, cfg.n_head, cfg.kv_heads, cfg.dropout, cfg.bias, layer, cfg.head_size
        )
        self.mlp_norm = make_norm(cfg.norm, cfg.n_embd, cfg.norm_eps, cfg.bias)
        self.mlp = MLP(cfg.n_embd, cfg.hidden, cfg.activation, cfg.dropout, cfg.bias)

    def forward(self, x, rope=None, cache=None, pos=0, mask=None, need_weights: bool = False):
        """The block's output; with need_weights, (output, attention weights (B, n_head, T, pos+T))."""
        if need_weights:
            a, weights = self.attn(self.attn_norm(x), rope, cache, pos, mask, need_weights=True)
            x = x + a
            return x + self.mlp(self.mlp_norm(x)), weights
        x = x + self.attn(self.attn_norm(x), rope, cache, pos, mask)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.position == "learned" else None
        # Positions as (B, T) rather than a broadcast (T,): per-example gradients (DP-SGD, train/privacy.py, which
        # sets it) need the batch dimension; other runs skip the B-fold embedding lookup and its backward.
        self.batched_positions = False
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = make_norm(cfg.norm, cfg.n_embd, cfg.norm_eps, cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if cfg.position == "rope":
            cos, sin = rope_tables(cfg.head_size, cfg.block_size, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2's scaled init: residual projections shrink with depth so the residual stream keeps its scale.
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def encode(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        pos: int = 0,
        key_mask: torch.Tensor | None = None,
        last_only: bool = False,
        segments: torch.Tensor | None = None,
        output_attentions: bool = False,
    ):
        """Final hidden states (B, T, n_embd) for token ids (B, T) that start at position `pos` (> 0 only with a
        cache): what the output layer reads, and what a classification head pools.

        `key_mask` (B, pos + T), True at real tokens, allows left-padded rows (prompts of different lengths in one
        batch): each row's positions count from its first real token and no token attends to padding.
        `last_only` keeps the last position only (the prefill of generation needs nothing else).
        `segments` (B, T), a document number per token, is for packed training rows (several examples in one row,
        no cache): each token attends only to earlier tokens of its own document, whose positions start at 0.
        `output_attentions` returns (hidden, maps) with each layer's (B, n_head, T, pos+T) attention weights, from
        the explicit softmax path (models/layers.py) instead of scaled_dot_product_attention.
        """
        B, T = idx.shape
        if pos + T > self.config.block_size:
            raise ValueError(
                f"sequence of {pos + T} tokens is longer than block_size {self.config.block_size}"
            )
        mask = positions = None
        if key_mask is not None:
            positions = (key_mask.long().cumsum(-1) - 1).clamp(min=0)[:, pos : pos + T]
            causal = torch.ones(T, pos + T, dtype=torch.bool, device=idx.device).tril(diagonal=pos)
            # A padding query would see no key at all (NaN in softmax); it may see itself, and is never read.
            keys = torch.arange(pos + T, device=idx.device)
            itself = keys[None, :] == keys[pos:, None]
            mask = ((causal & key_mask[:, None, :]) | itself)[:, None]
        elif segments is not None:
            if cache is not None or pos:
                raise ValueError("segments describe whole packed rows; they do not combine with a cache")
            positions, mask = segment_positions_and_mask(segments)
        x = self.tok_emb(idx)
        rope = None
        if self.pos_emb is not None:
            if positions is None:
                positions = torch.arange(pos, pos + T, device=idx.device)
                if self.batched_positions:
                    positions = positions.expand(B, T)
            x = x + self.pos_emb(positions)
        elif positions is None:
            rope = (self.rope_cos[pos : pos + T], self.rope_sin[pos : pos + T])
        else:
            rope = (self.rope_cos[positions][:, None], self.rope_sin[positions][:, None])
        x = self.drop(x)
        maps = []
        for block in self.blocks:
            if output_attentions:
                x, weights = block(x, rope, cache, pos, mask, need_weights=True)
                maps.append(weights)
            else:
                x = block(x, rope, cache, pos, mask)
        if last_only:
            x = x[:, -1:]
        return (self.norm(x), maps) if output_attentions else self.norm(x)

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        pos: int = 0,
        key_mask: torch.Tensor | None = None,
        last_only: bool = False,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids (B, T) that start at position `pos` (> 0 only with a cache); see
        encode() for `key_mask` (left-padded batches), `last_only` (logits of the last position only) and
        `segments` (packed rows of several documents)."""
        return self.lm_head(self.encode(idx, cache, pos, key_mask, last_only, segments))

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        cfg = self.config
        p = self.tok_emb.weight
        return KVCache(
            cfg.n_layer, batch, cfg.kv_heads, max_len or cfg.block_size, cfg.head_size, p.device, p.dtype
        )

    # ---- accounting ------------------------------------------------------------------------------
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> dict[str, int]:
        """Matmul FLOPs per token at full context: forward (inference) and forward + backward (training).

        2 FLOPs per multiply-add of every weight matrix (the output projection too, even when tied to the
        embedding; embedding lookups cost nothing) plus attention's QK^T and AV over block_size keys.
        """
        cfg = self.config
        matmul_params = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        attention = 2 * 2 * cfg.n_layer * cfg.block_size * cfg.n_embd
        forward = 2 * matmul_params + attention
        return {"forward": forward, "training": 3 * forward}
