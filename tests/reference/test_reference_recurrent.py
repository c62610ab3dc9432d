"""lmforge.reference.recurrent against torch.nn.RNN / LSTM / GRU with the same weights copied in (float64):
forward outputs, and every BPTT gradient (inputs, initial state, parameters) against autograd."""

import numpy as np
import pytest
import torch

from lmforge.reference import recurrent
from lmforge.reference.gradcheck import assert_matches, numerical_gradient, rel_error

TOL = 1e-6
B, T, D, H = 3, 6, 4, 5


def torch_module(kind):
    torch.manual_seed(0)
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    return cls(D, H, batch_first=True).double()


def params_from_torch(kind, module):
    """PyTorch's layout transposed to x W; its two biases summed where only their sum matters."""
    p = {
        "W_x": module.weight_ih_l0.detach().numpy().T.copy(),
        "W_h": module.weight_hh_l0.detach().numpy().T.copy(),
    }
    if kind == "gru":
        p["b_x"] = module.bias_ih_l0.detach().numpy().copy()
        p["b_h"] = module.bias_hh_l0.detach().numpy().copy()
    else:
        p["b"] = (module.bias_ih_l0 + module.bias_hh_l0).detach().numpy()
    return p


def torch_grads(kind, module):
    g = {"W_x": module.weight_ih_l0.grad.T, "W_h": module.weight_hh_l0.grad.T}
    if kind == "gru":
        g.update(b_x=module.bias_ih_l0.grad, b_h=module.bias_hh_l0.grad)
    else:
        g["b"] = module.bias_ih_l0.grad  # dL/db_ih == dL/db_hh == dL/db, since only the sum enters
    return g


def run_ours(kind, x, h0, c0, params, dh):
    """Forward and backward of the NumPy implementation; returns (h, final state tuple, dx, d_initial, grads)."""
    if kind == "lstm":
        h, final, cache = recurrent.lstm_forward(x, h0, c0, params)
        dx, dh0, dc0, grads = recurrent.lstm_backward(dh, cache)
        return h, final, dx, (dh0, dc0), grads
    forward, backward = {
        "rnn": (recurrent.rnn_forward, recurrent.rnn_backward),
        "gru": (recurrent.gru_forward, recurrent.gru_backward),
    }[kind]
    h, cache = forward(x, h0, params)
    dx, dh0, grads = backward(dh, cache)
    return h, (h[:, -1],), dx, (dh0,), grads


def run_torch(kind, module, x, h0, c0, dh):
    x_t = torch.tensor(x, requires_grad=True)
    h0_t = torch.tensor(h0[None], requires_grad=True)
    c0_t = torch.tensor(c0[None], requires_grad=True)
    state = (h0_t, c0_t) if kind == "lstm" else h0_t
    out, final = module(x_t, state)
    out.backward(torch.from_numpy(dh))
    final = tuple(s[0] for s in final) if kind == "lstm" else (final[0],)
    d_initial = (h0_t.grad[0], c0_t.grad[0]) if kind == "lstm" else (h0_t.grad[0],)
    return out, final, x_t.grad, d_initial


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_forward_and_bptt_gradients_match_torch(kind):
    rng = np.random.default_rng(1)
    module = torch_module(kind)
    params = params_from_torch(kind, module)
    x, h0, c0 = rng.normal(size=(B, T, D)), rng.normal(size=(B, H)) * 0.5, rng.normal(size=(B, H)) * 0.5
    dh = rng.normal(size=(B, T, H))  # the loss reads every hidden state

    h, final, dx, d_initial, grads = run_ours(kind, x, h0, c0, params, dh)
    h_t, final_t, dx_t, d_initial_t = run_torch(kind, module, x, h0, c0, dh)

    assert_matches(h, h_t, "h")
    for ours, theirs in zip(final, final_t, strict=True):
        assert_matches(ours, theirs, "final state")
    assert_matches(dx, dx_t, "dx")
    for ours, theirs in zip(d_initial, d_initial_t, strict=True):
        assert_matches(ours, theirs, "d initial state")
    expected = torch_grads(kind, module)
    assert grads.keys() == expected.keys()
    for name, g in expected.items():
        assert_matches(grads[name], g, name)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_gradient_flows_back_through_time(kind):
    """A loss on the LAST hidden state only: every earlier input and the initial state still get a gradient,
    and it is the right one. This is the 'through time' of BPTT."""
    rng = np.random.default_rng(2)
    module = torch_module(kind)
    params = params_from_torch(kind, module)
    x, h0, c0 = rng.normal(size=(B, T, D)), rng.normal(size=(B, H)) * 0.5, rng.normal(size=(B, H)) * 0.5
    dh = np.zeros((B, T, H))
    dh[:, -1] = rng.normal(size=(B, H))

    _, _, dx, d_initial, grads = run_ours(kind, x, h0, c0, params, dh)
    _, _, dx_t, d_initial_t = run_torch(kind, module, x, h0, c0, dh)

    for t in range(T):  # every step, the first one included, receives a nonzero gradient
        assert np.abs(dx[:, t]).max() > 1e-8, f"no gradient reached x_{t}"
    assert_matches(dx[:, 0], dx_t[:, 0], "dx_0")
    assert_matches(dx, dx_t, "dx")
    for ours, theirs in zip(d_initial, d_initial_t, strict=True):
        assert np.abs(ours).max() > 1e-8
        assert_matches(ours, theirs, "d initial state")
    for name, g in torch_grads(kind, module).items():
        assert_matches(grads[name], g, name)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bptt_against_finite_differences(kind):
    """An independent check that needs no PyTorch: central differences on a tiny network."""
    rng = np.random.default_rng(3)
    b, steps, d, hidden = 2, 3, 2, 3
    params = recurrent.init_params(kind, d, hidden, rng)
    x, h0, c0 = rng.normal(size=(b, steps, d)), rng.normal(size=(b, hidden)), rng.normal(size=(b, hidden))
    G = rng.normal(size=(b, steps, hidden))

    def loss():
        return float((run_ours(kind, x, h0, c0, params, G)[0] * G).sum())

    _, _, dx, (dh0, *_), grads = run_ours(kind, x, h0, c0, params, G)
    assert rel_error(dx, numerical_gradient(loss, x)) < TOL
    assert rel_error(dh0, numerical_gradient(loss, h0)) < TOL
    for name, p in params.items():
        assert rel_error(grads[name], numerical_gradient(loss, p)) < TOL, name


def test_init_params_shapes():
    rng = np.random.default_rng(0)
    p = recurrent.init_params("lstm", D, H, rng)
    assert p["W_x"].shape == (D, 4 * H) and p["W_h"].shape == (H, 4 * H) and p["b"].shape == (4 * H,)
    p = recurrent.init_params("gru", D, H, rng)
    assert p["W_x"].shape == (D, 3 * H) and p["b_x"].shape == p["b_h"].shape == (3 * H,)
    assert np.abs(p["W_h"]).max() <= 1 / np.sqrt(H)
