"""Attention: scaled dot-product attention with a causal mask, multi-head self-attention, a Transformer block.

Shapes: x is (B, T, C): batch, time (sequence position), channels (the model width). Multi-head attention splits
the C channels into n_head heads of size d = C / n_head and attends in every head independently.

The Transformer block is the GPT-2 ("pre-LN") block, the same computation as `lmforge.models.gpt.Block` with
LayerNorm, GELU and biases:

    x1 = x  + MHA(LN1(x))
    y  = x1 + MLP(LN2(x1))          MLP(h) = GELU(h W_1 + b_1) W_2 + b_2
"""

from __future__ import annotations

import numpy as np

from lmforge.reference.layers import (
    affine_backward,
    affine_forward,
    gelu_backward,
    gelu_forward,
    layer_norm_backward,
    layer_norm_forward,
    softmax,
    softmax_backward,
)

# ------------------------------------------------------------------------------------------------------------
# Scaled dot-product attention
# ------------------------------------------------------------------------------------------------------------


def causal_mask(T: int) -> np.ndarray:
    """allowed[i, j] is True when query position i may look at key position j, i.e. when j <= i."""
    return np.tril(np.ones((T, T), dtype=bool))


def attention_forward(q, k, v, causal: bool = True):
    """softmax(q k^T / sqrt(d) + M) v

        q: (..., T, d), k: (..., S, d), v: (..., S, d_v); out: (..., T, d_v); any leading axes (batch, heads)
        s = q k^T / sqrt(d)                       scores, (..., T, S): how well query i matches key j
        s_ij = -inf where j > i (causal)          the mask M: position i must not see the future
        p = softmax(s) over j                     attention weights; each row sums to 1; p_ij = 0 where masked
        out = p v                                 each output is a weighted average of the values

    Dividing by sqrt(d) keeps the scores' variance near 1 when q and k have unit-variance entries, so the softmax
    does not saturate as d grows.
    """
    d = q.shape[-1]
    scale = 1.0 / np.sqrt(d)
    s = (q @ np.swapaxes(k, -1, -2)) * scale
    if causal:  # self-attention: T == S, query i and key i are the same position
        s = np.where(causal_mask(s.shape[-1]), s, -np.inf)
    p = softmax(s, axis=-1)
    out = p @ v
    return out, (q, k, v, p, scale)


def attention_backward(dout, cache):
    """Returns (dq, dk, dv).

        dv = p^T dout                 dp = dout v^T                 (out = p v is a matrix product)
        ds = p * (dp - sum_j dp * p)  (softmax backward, row by row)
        dq = ds k * scale             dk = ds^T q * scale           (s = q k^T * scale)

    The mask needs no code here: masked entries have p = 0, so ds = 0 there and nothing flows from a query to a
    future key or value.
    """
    q, k, v, p, scale = cache
    dv = np.swapaxes(p, -1, -2) @ dout
    dp = dout @ np.swapaxes(v, -1, -2)
    ds = softmax_backward(dp, p, axis=-1)
    dq = (ds @ k) * scale
    dk = (np.swapaxes(ds, -1, -2) @ q) * scale
    return dq, dk, dv


# ------------------------------------------------------------------------------------------------------------
# Multi-head self-attention
# ------------------------------------------------------------------------------------------------------------

MHA_PARAMS = ("W_q", "b_q", "W_k", "b_k", "W_v", "b_v", "W_o", "b_o")


def split_heads(x, n_head: int):
    """(B, T, C) -> (B, n_head, T, C / n_head): channels [h*d, (h+1)*d) belong to head h."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, n_head, T, d) -> (B, T, n_head * d), the inverse of split_heads."""
    B, n_head, T, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, n_head * d)


def init_mha_params(C: int, rng: np.random.Generator, std: float = 0.02) -> dict[str, np.ndarray]:
    params = {}
    for name in ("q", "k", "v", "o"):
        params[f"W_{name}"] = rng.normal(0.0, std, size=(C, C))
        params[f"b_{name}"] = np.zeros(C)
    return params


def mha_forward(x, params, n_head: int, causal: bool = True):
    """Multi-head self-attention:

        q = x W_q + b_q,   k = x W_k + b_k,   v = x W_v + b_v              all (B, T, C), W_*: (C, C)
        split q, k, v into n_head heads of width d = C / n_head            (B, n_head, T, d)
        head_h = attention(q_h, k_h, v_h)                                  every head attends on its own
        y = concat(head_1, ..., head_n) W_o + b_o                          (B, T, C)

    Same computation as torch.nn.MultiheadAttention (in_proj_weight = [W_q^T; W_k^T; W_v^T]) with q = k = v = x.
    """
    q, cache_q = affine_forward(x, params["W_q"], params["b_q"])
    k, cache_k = affine_forward(x, params["W_k"], params["b_k"])
    v, cache_v = affine_forward(x, params["W_v"], params["b_v"])
    heads, cache_att = attention_forward(
        split_heads(q, n_head), split_heads(k, n_head), split_heads(v, n_head), causal
    )
    y, cache_o = affine_forward(merge_heads(heads), params["W_o"], params["b_o"])
    return y, (cache_q, cache_k, cache_v, cache_att, cache_o, n_head)


def mha_backward(dy, cache):
    """Backward through the same steps in reverse order. Returns (dx, grads).

    x feeds three projections (q, k and v), so dx is the sum of the three gradients coming back from them.

    One gradient is always zero (up to rounding): db_k. Adding b_k to every key adds the same number q_i . b_k
    to every score of row i, and softmax does not change when a constant is added to a whole row. (Many models
    therefore drop the key bias.)"""
    cache_q, cache_k, cache_v, cache_att, cache_o, n_head = cache
    grads = {}
    dmerged, grads["W_o"], grads["b_o"] = affine_backward(dy, cache_o)
    dq, dk, dv = attention_backward(split_heads(dmerged, n_head), cache_att)  # split is merge's inverse
    dx_q, grads["W_q"], grads["b_q"] = affine_backward(merge_heads(dq), cache_q)
    dx_k, grads["W_k"], grads["b_k"] = affine_backward(merge_heads(dk), cache_k)
    dx_v, grads["W_v"], grads["b_v"] = affine_backward(merge_heads(dv), cache_v)
    return dx_q + dx_k + dx_v, grads


# ------------------------------------------------------------------------------------------------------------
# Transformer block (pre-LN, GPT-2)
# ------------------------------------------------------------------------------------------------------------


def init_block_params(
    C: int, hidden: int, rng: np.random.Generator, std: float = 0.02
) -> dict[str, np.ndarray]:
    params = {"ln1_gamma": np.ones(C), "ln1_beta": np.zeros(C)}
    params.update(init_mha_params(C, rng, std))
    params.update(
        ln2_gamma=np.ones(C),
        ln2_beta=np.zeros(C),
        W_1=rng.normal(0.0, std, size=(C, hidden)),
        b_1=np.zeros(hidden),
        W_2=rng.normal(0.0, std, size=(hidden, C)),
        b_2=np.zeros(C),
    )
    return params


def block_forward(x, params, n_head: int, causal: bool = True, eps: float = 1e-5):
    """One pre-LN Transformer block:

        h1 = LN1(x)                          a = MHA(h1)                      x1 = x + a        (residual)
        h2 = LN2(x1)   u = h2 W_1 + b_1      m = GELU(u)   f = m W_2 + b_2    y = x1 + f        (residual)

    Each sub-layer reads a normalised copy of the residual stream and ADDS its result back to it.
    """
    h1, cache_ln1 = layer_norm_forward(x, params["ln1_gamma"], params["ln1_beta"], eps)
    a, cache_mha = mha_forward(h1, params, n_head, causal)
    x1 = x + a
    h2, cache_ln2 = layer_norm_forward(x1, params["ln2_gamma"], params["ln2_beta"], eps)
    u, cache_fc1 = affine_forward(h2, params["W_1"], params["b_1"])
    m, cache_gelu = gelu_forward(u)
    f, cache_fc2 = affine_forward(m, params["W_2"], params["b_2"])
    y = x1 + f
    return y, (cache_ln1, cache_mha, cache_ln2, cache_fc1, cache_gelu, cache_fc2)


def block_backward(dy, cache):
    """Returns (dx, grads). A residual connection y = x1 + f(x1) has dy/dx1 = 1 + df/dx1: the upstream gradient
    passes straight through to x1 AND also flows back through the sub-layer; the two are added."""
    cache_ln1, cache_mha, cache_ln2, cache_fc1, cache_gelu, cache_fc2 = cache
    grads = {}
    # y = x1 + f
    dm, grads["W_2"], grads["b_2"] = affine_backward(dy, cache_fc2)
    du = gelu_backward(dm, cache_gelu)
    dh2, grads["W_1"], grads["b_1"] = affine_backward(du, cache_fc1)
    dx1_mlp, grads["ln2_gamma"], grads["ln2_beta"] = layer_norm_backward(dh2, cache_ln2)
    dx1 = dy + dx1_mlp
    # x1 = x + a
    dh1, mha_grads = mha_backward(dx1, cache_mha)
    grads.update(mha_grads)
    dx_attn, grads["ln1_gamma"], grads["ln1_beta"] = layer_norm_backward(dh1, cache_ln1)
    return dx1 + dx_attn, grads
