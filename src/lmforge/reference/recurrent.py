"""Recurrent networks: the RNN, LSTM and GRU cells, unrolled over a sequence, and backpropagation through time.

Shapes: x is (B, T, D) (batch first), hidden states are (B, H). Every `*_forward` returns all hidden states
h of shape (B, T, H) and a cache; every `*_backward` takes dL/dh for ALL time steps, (B, T, H), and returns the
gradients of the inputs x, of the initial state(s) and of the parameters (a dict with the parameter names).

Unrolling. A recurrent network applies the same cell at every step: h_t = cell(x_t, h_{t-1}). Written out for a
sequence it is one deep feed-forward network whose layers share their weights. Backpropagation through time
(BPTT) is ordinary backpropagation through that unrolled network:

* walk the steps backwards, t = T-1, ..., 0;
* the gradient reaching h_t is what the loss sends to it directly (dh[:, t]) PLUS what step t+1 sent back
  through its h_{t-1} input;
* a shared weight gets the SUM of its gradients from every step (a weight used T times has T contributions).

Gate layouts follow PyTorch (torch.nn.RNN / LSTM / GRU with batch_first=True), so the weights can be copied:
W_x = weight_ih_l0.T, W_h = weight_hh_l0.T. PyTorch has two biases, b_ih and b_hh; for the RNN and the LSTM they
are only ever added together, so here they are one bias b = b_ih + b_hh. The GRU keeps both (b_x, b_h), because
its candidate n multiplies b_hn by the reset gate.
"""

from __future__ import annotations

import numpy as np

from lmforge.reference.layers import sigmoid


def init_params(
    kind: str, input_size: int, hidden_size: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Weights uniform in [-1/sqrt(H), 1/sqrt(H)], as PyTorch initialises its recurrent layers."""
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[kind]
    k = 1.0 / np.sqrt(hidden_size)

    def u(*shape):
        return rng.uniform(-k, k, size=shape)

    params = {"W_x": u(input_size, gates * hidden_size), "W_h": u(hidden_size, gates * hidden_size)}
    if kind == "gru":
        params.update(b_x=u(gates * hidden_size), b_h=u(gates * hidden_size))
    else:
        params["b"] = u(gates * hidden_size)
    return params


PARAM_NAMES = {"rnn": ("W_x", "W_h", "b"), "lstm": ("W_x", "W_h", "b"), "gru": ("W_x", "W_h", "b_x", "b_h")}


def _zero_grads(kind: str, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Gradient accumulators for the cell's own parameters (`params` may hold other layers' too)."""
    return {name: np.zeros_like(params[name]) for name in PARAM_NAMES[kind]}


# ------------------------------------------------------------------------------------------------------------
# Vanilla (Elman) RNN
# ------------------------------------------------------------------------------------------------------------


def rnn_step_forward(x_t, h_prev, params):
    """h_t = tanh(x_t W_x + h_{t-1} W_h + b)         W_x: (D, H), W_h: (H, H), b: (H,)"""
    h = np.tanh(x_t @ params["W_x"] + h_prev @ params["W_h"] + params["b"])
    return h, (x_t, h_prev, h)


def rnn_step_backward(dh, cache, params, grads):
    """With a = x_t W_x + h_{t-1} W_h + b and h_t = tanh(a):

        da = dh * (1 - h_t^2)          dx_t = da W_x^T          dh_{t-1} = da W_h^T
        dW_x += x_t^T da               dW_h += h_{t-1}^T da     db += sum over the batch of da

    Adds the parameter gradients into `grads`; returns (dx_t, dh_prev).
    """
    x_t, h_prev, h = cache
    da = dh * (1.0 - h**2)
    grads["W_x"] += x_t.T @ da
    grads["W_h"] += h_prev.T @ da
    grads["b"] += da.sum(axis=0)
    return da @ params["W_x"].T, da @ params["W_h"].T


def rnn_forward(x, h0, params):
    """Unrolled RNN. x: (B, T, D), h0: (B, H). Returns (h of shape (B, T, H), cache)."""
    hs, caches = [], []
    h = h0
    for t in range(x.shape[1]):
        h, cache_t = rnn_step_forward(x[:, t], h, params)
        hs.append(h)
        caches.append(cache_t)
    return np.stack(hs, axis=1), (caches, params)


def rnn_backward(dh, cache):
    """BPTT for the RNN. dh: dL/dh_t for every t, (B, T, H). Returns (dx, dh0, grads)."""
    caches, params = cache
    grads = _zero_grads("rnn", params)
    dx = []
    dh_next = np.zeros_like(dh[:, 0])  # what step t+1 sends back to h_t; nothing comes after the last step
    for t in reversed(range(dh.shape[1])):
        dx_t, dh_next = rnn_step_backward(dh[:, t] + dh_next, caches[t], params, grads)
        dx.append(dx_t)
    return np.stack(dx[::-1], axis=1), dh_next, grads


# ------------------------------------------------------------------------------------------------------------
# LSTM
# ------------------------------------------------------------------------------------------------------------


def lstm_step_forward(x_t, h_prev, c_prev, params):
    """One LSTM step; the four gates sit side by side in the columns of W_x, W_h and b, in PyTorch's order:

    a = x_t W_x + h_{t-1} W_h + b           W_x: (D, 4H), W_h: (H, 4H), b: (4H,), a = [a_i | a_f | a_g | a_o]
    i = sigmoid(a_i)    input gate:  how much of the candidate to write
    f = sigmoid(a_f)    forget gate: how much of the old cell to keep
    g = tanh(a_g)       candidate cell values
    o = sigmoid(a_o)    output gate: how much of the cell to show
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)
    """
    H = h_prev.shape[1]
    a = x_t @ params["W_x"] + h_prev @ params["W_h"] + params["b"]
    i = sigmoid(a[:, :H])
    f = sigmoid(a[:, H : 2 * H])
    g = np.tanh(a[:, 2 * H : 3 * H])
    o = sigmoid(a[:, 3 * H :])
    c = f * c_prev + i * g
    tanh_c = np.tanh(c)
    h = o * tanh_c
    return h, c, (x_t, h_prev, c_prev, i, f, g, o, tanh_c)


def lstm_step_backward(dh, dc, cache, params, grads):
    """dh, dc: gradients reaching h_t and c_t. Adds parameter gradients into `grads`;
    returns (dx_t, dh_prev, dc_prev).

        do  = dh * tanh(c_t)
        dc  = dc + dh * o * (1 - tanh(c_t)^2)          (c_t reaches the loss directly AND through h_t)
        df  = dc * c_{t-1}     di = dc * g      dg = dc * i      dc_{t-1} = dc * f
        da  = [di * i(1-i) | df * f(1-f) | dg * (1-g^2) | do * o(1-o)]
        dx_t = da W_x^T     dh_{t-1} = da W_h^T     dW_x += x_t^T da     dW_h += h_{t-1}^T da     db += sum da

    dc_{t-1} = dc * f is the LSTM's "gradient highway": when the forget gate is near 1, the cell's gradient
    passes back through time almost unchanged instead of being squashed by a tanh derivative at every step.
    """
    x_t, h_prev, c_prev, i, f, g, o, tanh_c = cache
    do = dh * tanh_c
    dc = dc + dh * o * (1.0 - tanh_c**2)
    df = dc * c_prev
    di = dc * g
    dg = dc * i
    dc_prev = dc * f
    da = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g**2), do * o * (1 - o)], axis=1)
    grads["W_x"] += x_t.T @ da
    grads["W_h"] += h_prev.T @ da
    grads["b"] += da.sum(axis=0)
    return da @ params["W_x"].T, da @ params["W_h"].T, dc_prev


def lstm_forward(x, h0, c0, params):
    """Unrolled LSTM. x: (B, T, D), h0, c0: (B, H). Returns (h of shape (B, T, H), (h_T, c_T), cache);
    (h_T, c_T) is the final state, to carry into the next chunk of a long sequence."""
    hs, caches = [], []
    h, c = h0, c0
    for t in range(x.shape[1]):
        h, c, cache_t = lstm_step_forward(x[:, t], h, c, params)
        hs.append(h)
        caches.append(cache_t)
    return np.stack(hs, axis=1), (h, c), (caches, params)


def lstm_backward(dh, cache):
    """BPTT for the LSTM. dh: (B, T, H). Returns (dx, dh0, dc0, grads).

    The loss reads only the h_t, so no gradient enters the cell state from outside; the cell's gradient is the
    one carried back from step t+1 (zero after the last step)."""
    caches, params = cache
    grads = _zero_grads("lstm", params)
    dx = []
    dh_next = np.zeros_like(dh[:, 0])
    dc_next = np.zeros_like(dh[:, 0])
    for t in reversed(range(dh.shape[1])):
        dx_t, dh_next, dc_next = lstm_step_backward(dh[:, t] + dh_next, dc_next, caches[t], params, grads)
        dx.append(dx_t)
    return np.stack(dx[::-1], axis=1), dh_next, dc_next, grads


# ------------------------------------------------------------------------------------------------------------
# GRU
# ------------------------------------------------------------------------------------------------------------


def gru_step_forward(x_t, h_prev, params):
    """One GRU step in PyTorch's formulation (gates r, z, n side by side in the columns):

    gx = x_t W_x + b_x = [gx_r | gx_z | gx_n]      W_x: (D, 3H), b_x: (3H,)
    gh = h_{t-1} W_h + b_h = [gh_r | gh_z | gh_n]  W_h: (H, 3H), b_h: (3H,)
    r = sigmoid(gx_r + gh_r)          reset gate: how much of the old state the candidate may see
    z = sigmoid(gx_z + gh_z)          update gate: how much of the old state to keep
    n = tanh(gx_n + r * gh_n)         candidate; note r multiplies (h W_hn + b_hn), bias included
    h_t = (1 - z) * n + z * h_{t-1}
    """
    H = h_prev.shape[1]
    gx = x_t @ params["W_x"] + params["b_x"]
    gh = h_prev @ params["W_h"] + params["b_h"]
    r = sigmoid(gx[:, :H] + gh[:, :H])
    z = sigmoid(gx[:, H : 2 * H] + gh[:, H : 2 * H])
    gh_n = gh[:, 2 * H :]
    n = np.tanh(gx[:, 2 * H :] + r * gh_n)
    h = (1 - z) * n + z * h_prev
    return h, (x_t, h_prev, r, z, n, gh_n)


def gru_step_backward(dh, cache, params, grads):
    """Adds parameter gradients into `grads`; returns (dx_t, dh_prev).

    dn = dh * (1 - z)       dz = dh * (h_{t-1} - n)       dh_{t-1} = dh * z  + (the part through gh, below)
    da_n = dn * (1 - n^2)   dr = da_n * gh_n              dgh_n = da_n * r
    da_r = dr * r(1-r)      da_z = dz * z(1-z)
    dgx = [da_r | da_z | da_n]       dgh = [da_r | da_z | dgh_n]
    dx_t = dgx W_x^T     dh_{t-1} += dgh W_h^T
    dW_x += x_t^T dgx    dW_h += h_{t-1}^T dgh    db_x += sum dgx    db_h += sum dgh
    """
    x_t, h_prev, r, z, n, gh_n = cache
    dn = dh * (1 - z)
    dz = dh * (h_prev - n)
    da_n = dn * (1 - n**2)
    dr = da_n * gh_n
    da_r = dr * r * (1 - r)
    da_z = dz * z * (1 - z)
    dgx = np.concatenate([da_r, da_z, da_n], axis=1)
    dgh = np.concatenate([da_r, da_z, da_n * r], axis=1)
    grads["W_x"] += x_t.T @ dgx
    grads["W_h"] += h_prev.T @ dgh
    grads["b_x"] += dgx.sum(axis=0)
    grads["b_h"] += dgh.sum(axis=0)
    dh_prev = dh * z + dgh @ params["W_h"].T
    return dgx @ params["W_x"].T, dh_prev


def gru_forward(x, h0, params):
    """Unrolled GRU. x: (B, T, D), h0: (B, H). Returns (h of shape (B, T, H), cache)."""
    hs, caches = [], []
    h = h0
    for t in range(x.shape[1]):
        h, cache_t = gru_step_forward(x[:, t], h, params)
        hs.append(h)
        caches.append(cache_t)
    return np.stack(hs, axis=1), (caches, params)


def gru_backward(dh, cache):
    """BPTT for the GRU. dh: (B, T, H). Returns (dx, dh0, grads)."""
    caches, params = cache
    grads = _zero_grads("gru", params)
    dx = []
    dh_next = np.zeros_like(dh[:, 0])
    for t in reversed(range(dh.shape[1])):
        dx_t, dh_next = gru_step_backward(dh[:, t] + dh_next, caches[t], params, grads)
        dx.append(dx_t)
    return np.stack(dx[::-1], axis=1), dh_next, grads
