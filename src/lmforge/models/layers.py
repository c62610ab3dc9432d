"""Building blocks shared by the Transformer models: norms, rotary embeddings, attention with a KV cache, MLPs.

Attention runs through `scaled_dot_product_attention` (the fast path). With `need_weights=True` the attention
modules compute softmax(QK^T / sqrt(d) + mask) step by step instead (`explicit_attention`) and also return the
weights, (B, H, T, S): the maps lmforge.explain shows, tested to give the same outputs as the fast path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 for stability under autocast, as Llama does.
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def make_norm(kind: str, dim: int, eps: float, bias: bool) -> nn.Module:
    if kind == "rmsnorm":
        return RMSNorm(dim, eps)
    return nn.LayerNorm(dim, eps=eps, bias=bias)


def rope_tables(head_dim: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (length, head_dim) in the rotate-half layout used by Hugging Face Llama."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) queries or keys by position; cos/sin are (T, D), or (B, 1, T, D) for per-row positions."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(QK^T / sqrt(d) + mask) V and the weights (B, H, T, S), as `scaled_dot_product_attention` computes
    them without dropout: `mask` is True where a query may attend to a key (or, a float mask, is added to the
    scores: T5's relative-position bias); `causal` lets query i (of the last T
    keys) see keys up to itself; fewer key/value heads than query heads are shared as with `enable_gqa`."""
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    T, S = q.shape[-2], k.shape[-2]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if causal:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    if mask is not None:
        scores = scores + mask if mask.is_floating_point() else scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(-1)
    return weights @ v, weights


class KVCache:
    """Preallocated keys and values of every layer, so each decoding step attends to all earlier tokens."""

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_len: int, head_dim: int, device, dtype):
        shape = (batch, n_kv_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.max_len = max_len

    def update(
        self, layer: int, pos: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = pos + k.shape[2]
        self.k[layer][:, :, pos:end] = k
        self.v[layer][:, :, pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    """Multi-head (or grouped-query, when n_kv_head < n_head) causal self-attention."""

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        n_kv_head: int,
        dropout: float,
        bias: bool,
        layer: int,
        head_dim: int | None = None,
    ):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, head_dim or n_embd // n_head
        self.layer = layer
        # One fused projection for queries, keys and values: a single larger matmul is faster than three.
        self.qkv_proj = nn.Linear(n_embd, (n_head + 2 * n_kv_head) * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(n_head * self.head_dim, n_embd, bias=bias)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        pos: int = 0,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ):
        """x (B, T, C) at positions pos.. pos+T-1. `mask` (B, 1, T, pos+T), True where a query may attend to a key,
        replaces the causal mask when rows are padded (batched prompts of different lengths). With need_weights,
        (output, weights (B, n_head, T, pos+T)) from the explicit path (no attention dropout)."""
        B, T, C = x.shape
        kv_width = self.n_kv_head * self.head_dim
        q, k, v = self.qkv_proj(x).split([self.n_head * self.head_dim, kv_width, kv_width], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, pos, k, v)
        causal = T > 1 and mask is None
        if causal and pos > 0:
            # New tokens after a cached prefix: each sees the whole prefix and the new tokens up to itself.
            mask = torch.ones(T, pos + T, dtype=torch.bool, device=x.device).tril(diagonal=pos)
            causal = False
        weights = None
        if need_weights:
            y, weights = explicit_attention(q, k, v, mask, causal)
        else:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=causal,
                enable_gqa=self.n_kv_head != self.n_head,
            )
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)
        out = self.resid_dropout(self.o_proj(y))
        return (out, weights) if need_weights else out


class MLP(nn.Module):
    """GELU feed-forward (exact, or GPT-2's tanh approximation) or SwiGLU (Llama)."""

    def __init__(self, n_embd: int, hidden: int, activation: str, dropout: float, bias: bool):
        super().__init__()
        self.activation = activation
        self.up_proj = nn.Linear(n_embd, hidden, bias=bias)
        if activation == "swiglu":
            self.gate_proj = nn.Linear(n_embd, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "swiglu":
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        else:
            # The exact GELU is the default: on AVX2 CPUs it is ~3x faster than the tanh form (measured, 768x512).
            h = F.gelu(self.up_proj(x), approximate="tanh" if self.activation == "gelu_tanh" else "none")
        return self.dropout(self.down_proj(h))


class Attention(nn.Module):
    """Non-causal multi-head attention of queries over a memory, where a padding mask hides memory positions.

    An encoder's self-attention (the memory is its own input) or a decoder's cross-attention (the memory is the
    encoder's output). Keys and values come from `keys_values`, so a decoder computes them once per source and
    reuses them at every decoding step. `head_dim` gives the heads a width of their own (n_head * head_dim need not
    be n_embd, as in mT5).
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool, head_dim: int | None = None):
        super().__init__()
        self.n_head, self.head_dim = n_head, head_dim or n_embd // n_head
        inner = n_head * self.head_dim
        self.q_proj = nn.Linear(n_embd, inner, bias=bias)
        self.kv_proj = nn.Linear(n_embd, 2 * inner, bias=bias)
        self.o_proj = nn.Linear(inner, n_embd, bias=bias)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, H, S, head_dim) of a memory (B, S, C)."""
        B, S, _ = memory.shape
        k, v = self.kv_proj(memory).split(self.n_head * self.head_dim, dim=-1)
        return tuple(t.view(B, S, self.n_head, self.head_dim).transpose(1, 2) for t in (k, v))

    def forward(
        self,
        x: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ):
        """x (B, T, C) attends to kv; mask (B, 1, 1, S) is True where a memory position may be attended to. With
        need_weights, (output, weights (B, n_head, T, S)) from the explicit path (no attention dropout)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        weights = None
        if need_weights:
            y, weights = explicit_attention(q, *kv, mask)
        else:
            y = F.scaled_dot_product_attention(
                q, *kv, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
            )
        out = self.resid_dropout(
            self.o_proj(y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim))
        )
        return (out, weights) if need_weights else out
