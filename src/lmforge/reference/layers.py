"""The small pieces: embedding, affine, softmax, cross-entropy, layer norm, GELU.

Conventions used in the whole `lmforge.reference` package:

* Vectors are rows. A batch of inputs is an array whose LAST axis is the feature axis, e.g. (B, T, D).
* An affine map is `y = x W + b` with `W` of shape (D_in, D_out). (PyTorch stores the transpose, (D_out, D_in).)
* Every piece has `*_forward(...) -> (out, cache)` and `*_backward(dout, cache) -> gradients`. `cache` holds
  what the backward pass needs from the forward pass; `dout` is dL/d(out) for some scalar loss L, of the same
  shape as `out`; the backward pass returns dL/d(input) and dL/d(parameter) for every input and parameter.

The one rule behind every backward pass is the chain rule: if `out = f(a)` then `dL/da = (dL/dout) (dout/da)`.
"""

from __future__ import annotations

import math

import numpy as np

# ------------------------------------------------------------------------------------------------------------
# Embedding
# ------------------------------------------------------------------------------------------------------------


def embedding_forward(ids: np.ndarray, W: np.ndarray):
    """Look up rows of a table.

        out[..., :] = W[ids[...], :]          ids: integers of any shape, W: (V, D), out: ids.shape + (D,)

    A lookup is a matrix product with one-hot rows: out = onehot(ids) W.
    """
    out = W[ids]
    return out, (ids, W.shape)


def embedding_backward(dout: np.ndarray, cache) -> np.ndarray:
    """dL/dW: since out = onehot(ids) W, dW = onehot(ids)^T dout, i.e. row v of dW is the sum of the
    upstream gradients of every position whose id is v. (A token that occurs twice gets both gradients.)"""
    ids, shape = cache
    dW = np.zeros(shape)
    np.add.at(dW, ids.reshape(-1), dout.reshape(-1, shape[1]))  # unbuffered: repeated ids add up
    return dW


# ------------------------------------------------------------------------------------------------------------
# Affine (a.k.a. linear, fully connected)
# ------------------------------------------------------------------------------------------------------------


def affine_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray | None):
    """y = x W + b          x: (..., D_in), W: (D_in, D_out), b: (D_out,) or None, y: (..., D_out)"""
    out = x @ W
    if b is not None:
        out = out + b
    return out, (x, W, b is not None)


def affine_backward(dout: np.ndarray, cache):
    """For y = x W + b:

        dx = dy W^T           dW = x^T dy  (summed over every leading axis)           db = sum of dy over rows

    Returns (dx, dW, db); db is None when the forward pass had no bias.
    """
    x, W, has_bias = cache
    dx = dout @ W.T
    x_rows = x.reshape(-1, x.shape[-1])  # every leading axis (batch, time) is just "more rows"
    dout_rows = dout.reshape(-1, dout.shape[-1])
    dW = x_rows.T @ dout_rows
    db = dout_rows.sum(axis=0) if has_bias else None
    return dx, dW, db


# ------------------------------------------------------------------------------------------------------------
# Softmax and cross-entropy
# ------------------------------------------------------------------------------------------------------------


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """p_i = exp(z_i) / sum_j exp(z_j). Subtracting max(z) first changes nothing mathematically (it cancels)
    but keeps exp() from overflowing. Entries equal to -inf get probability exactly 0 (used for masking)."""
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_backward(dp: np.ndarray, p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Given p = softmax(z) and dL/dp, return dL/dz.

    The Jacobian is dp_i/dz_j = p_i (delta_ij - p_j), so

        dz_j = sum_i dp_i p_i (delta_ij - p_j) = p_j (dp_j - sum_i dp_i p_i)
    """
    return p * (dp - (dp * p).sum(axis=axis, keepdims=True))


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """log p_i = z_i - log sum_j exp(z_j), computed without forming p (stable for very negative z_i)."""
    m = z.max(axis=axis, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=axis, keepdims=True))


def softmax_cross_entropy_forward(logits: np.ndarray, targets: np.ndarray):
    """Mean negative log-likelihood of the targets under softmax(logits).

        L = -(1/N) sum_n log softmax(z_n)[y_n]          logits z: (..., V), targets y: (...) integers, N = y.size

    This is `torch.nn.functional.cross_entropy` with reduction="mean".
    """
    V = logits.shape[-1]
    z = logits.reshape(-1, V)
    y = targets.reshape(-1)
    logp = log_softmax(z)
    loss = -logp[np.arange(len(y)), y].mean()
    return float(loss), (np.exp(logp), y, logits.shape)


def softmax_cross_entropy_backward(dloss: float, cache) -> np.ndarray:
    """dL/dz_n = (softmax(z_n) - onehot(y_n)) / N, times the upstream dloss (1.0 when L is the final loss).

    Softmax and the log of cross-entropy fit together so well that the Jacobian collapses to "predicted minus
    true": d(-log p_y)/dz_j = p_j - [j == y]."""
    p, y, shape = cache
    dz = p.copy()
    dz[np.arange(len(y)), y] -= 1.0
    return (dz * (dloss / len(y))).reshape(shape)


# ------------------------------------------------------------------------------------------------------------
# Layer norm
# ------------------------------------------------------------------------------------------------------------


def layer_norm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5):
    """Normalise every row over its D features, then scale and shift:

        mu = mean(x)   var = mean((x - mu)^2)   sigma = sqrt(var + eps)   xhat = (x - mu) / sigma
        y = gamma * xhat + beta                 x: (..., D), gamma, beta: (D,)

    (var is the biased variance, divided by D, as in torch.nn.LayerNorm.)
    """
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    sigma = np.sqrt(var + eps)
    xhat = (x - mu) / sigma
    out = gamma * xhat + beta
    return out, (xhat, sigma, gamma)


def layer_norm_backward(dout: np.ndarray, cache):
    """Returns (dx, dgamma, dbeta).

        dbeta  = sum over rows of dy            dgamma = sum over rows of dy * xhat
        dxhat  = dy * gamma
        dx     = (1 / sigma) * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))     (means over the D features)

    The two subtracted means are the gradient flowing through mu and through sigma: shifting every x_i by the
    same amount, or scaling every (x_i - mu) by the same factor, leaves xhat unchanged, so dx has no component
    along those two directions.
    """
    xhat, sigma, gamma = cache
    D = xhat.shape[-1]
    dbeta = dout.reshape(-1, D).sum(axis=0)
    dgamma = (dout * xhat).reshape(-1, D).sum(axis=0)
    dxhat = dout * gamma
    dx = (
        dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)
    ) / sigma
    return dx, dgamma, dbeta


# ------------------------------------------------------------------------------------------------------------
# Activations
# ------------------------------------------------------------------------------------------------------------

_GELU_C = math.sqrt(2.0 / math.pi)


def gelu_forward(x: np.ndarray):
    """GELU, tanh approximation (GPT-2; torch's F.gelu(x, approximate="tanh")):

    u = sqrt(2/pi) (x + 0.044715 x^3)        y = 0.5 x (1 + tanh(u))
    """
    t = np.tanh(_GELU_C * (x + 0.044715 * x**3))
    return 0.5 * x * (1.0 + t), (x, t)


def gelu_backward(dout: np.ndarray, cache) -> np.ndarray:
    """dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)   (product rule)"""
    x, t = cache
    du_dx = _GELU_C * (1.0 + 3 * 0.044715 * x**2)
    return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t**2) * du_dx)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """sigma(x) = 1 / (1 + exp(-x)); its derivative is sigma(x) (1 - sigma(x)). Written to never overflow exp."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
