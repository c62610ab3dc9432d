"""lmforge.reference.layers against PyTorch: forward outputs, and every hand-written gradient against autograd.

The pattern of every test: the same float64 numbers go into the NumPy piece and into PyTorch; both compute the
gradient of L = sum(out * G) for a random upstream gradient G (random rather than ones, so that a transposed or
misplaced term cannot hide); the two must agree to a relative error below 1e-6.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.reference import layers
from lmforge.reference.gradcheck import assert_matches, numerical_gradient, rel_error

TOL = 1e-6


def t(a):
    """A float64 torch leaf that records its gradient."""
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_rel_error():
    a = np.array([1.0, -2.0, 3.0])
    assert rel_error(a, a) == 0.0
    assert rel_error(a, a * (1 + 1e-3)) > TOL
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert rel_error(a, -a) == pytest.approx(1.0)


def test_embedding(rng):
    ids = np.array([[1, 4, 1, 0], [3, 4, 4, 2]])  # repeated ids: their gradients must add up
    W = rng.normal(size=(6, 5))
    out, cache = layers.embedding_forward(ids, W)
    G = rng.normal(size=out.shape)
    dW = layers.embedding_backward(G, cache)

    emb = torch.nn.Embedding(6, 5).double()
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(W))
    out_t = emb(torch.from_numpy(ids))
    out_t.backward(torch.from_numpy(G))
    assert_matches(out, out_t, "forward")
    assert_matches(dW, emb.weight.grad, "dW")
    assert np.all(dW[5] == 0)  # id 5 never occurs


def test_affine(rng):
    x, W, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(4, 5)), rng.normal(size=5)
    out, cache = layers.affine_forward(x, W, b)
    G = rng.normal(size=out.shape)
    dx, dW, db = layers.affine_backward(G, cache)

    lin = torch.nn.Linear(4, 5).double()
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(W.T))  # torch stores (out, in)
        lin.bias.copy_(torch.from_numpy(b))
    x_t = t(x)
    out_t = lin(x_t)
    out_t.backward(torch.from_numpy(G))
    assert_matches(out, out_t, "forward")
    assert_matches(dx, x_t.grad, "dx")
    assert_matches(dW, lin.weight.grad.T, "dW")
    assert_matches(db, lin.bias.grad, "db")


def test_affine_without_bias(rng):
    x, W = rng.normal(size=(3, 4)), rng.normal(size=(4, 2))
    out, cache = layers.affine_forward(x, W, None)
    dx, dW, db = layers.affine_backward(np.ones_like(out), cache)
    assert db is None
    x_t, W_t = t(x), t(W)
    (x_t @ W_t).sum().backward()
    assert_matches(dx, x_t.grad, "dx")
    assert_matches(dW, W_t.grad, "dW")


def test_softmax_and_its_backward(rng):
    z = rng.normal(size=(3, 7)) * 3
    p = layers.softmax(z)
    G = rng.normal(size=p.shape)
    dz = layers.softmax_backward(G, p)
    z_t = t(z)
    p_t = torch.softmax(z_t, dim=-1)
    p_t.backward(torch.from_numpy(G))
    assert_matches(p, p_t, "forward")
    assert_matches(dz, z_t.grad, "dz")
    np.testing.assert_allclose(p.sum(axis=-1), 1.0)
    # Stable for large logits, and -inf means probability 0.
    big = layers.softmax(np.array([1000.0, 1000.0, -np.inf]))
    np.testing.assert_array_equal(big, [0.5, 0.5, 0.0])


def test_softmax_cross_entropy(rng):
    logits = rng.normal(size=(2, 5, 11)) * 2
    targets = rng.integers(0, 11, size=(2, 5))
    loss, cache = layers.softmax_cross_entropy_forward(logits, targets)
    dlogits = layers.softmax_cross_entropy_backward(1.7, cache)

    logits_t = t(logits)
    loss_t = F.cross_entropy(logits_t.reshape(-1, 11), torch.from_numpy(targets).reshape(-1))
    (1.7 * loss_t).backward()
    assert loss == pytest.approx(loss_t.item(), rel=1e-12)
    assert_matches(dlogits, logits_t.grad, "dlogits")


def test_layer_norm(rng):
    x = rng.normal(size=(2, 3, 8)) * 2 + 1
    gamma, beta = 1 + 0.3 * rng.normal(size=8), 0.3 * rng.normal(size=8)
    out, cache = layers.layer_norm_forward(x, gamma, beta)
    G = rng.normal(size=out.shape)
    dx, dgamma, dbeta = layers.layer_norm_backward(G, cache)

    ln = torch.nn.LayerNorm(8, eps=1e-5).double()
    with torch.no_grad():
        ln.weight.copy_(torch.from_numpy(gamma))
        ln.bias.copy_(torch.from_numpy(beta))
    x_t = t(x)
    out_t = ln(x_t)
    out_t.backward(torch.from_numpy(G))
    assert_matches(out, out_t, "forward")
    assert_matches(dx, x_t.grad, "dx")
    assert_matches(dgamma, ln.weight.grad, "dgamma")
    assert_matches(dbeta, ln.bias.grad, "dbeta")


def test_gradient_check_catches_a_wrong_backward(rng):
    """The check has teeth: layer norm's backward WITHOUT the terms through mu and sigma (a classic mistake)
    fails it by many orders of magnitude."""
    x, gamma, beta = rng.normal(size=(4, 8)), rng.normal(size=8), rng.normal(size=8)
    out, cache = layers.layer_norm_forward(x, gamma, beta)
    G = rng.normal(size=out.shape)
    xhat, sigma, _ = cache
    naive_dx = G * gamma / sigma
    x_t = t(x)
    F.layer_norm(x_t, (8,), torch.from_numpy(gamma), torch.from_numpy(beta)).backward(torch.from_numpy(G))
    assert rel_error(naive_dx, x_t.grad.numpy()) > 1e-2
    assert rel_error(layers.layer_norm_backward(G, cache)[0], x_t.grad.numpy()) < TOL


def test_layer_norm_against_finite_differences(rng):
    """An independent check that needs no PyTorch: central differences of L = sum(LN(x) * G)."""
    x, gamma, beta = rng.normal(size=(3, 5)), rng.normal(size=5), rng.normal(size=5)
    G = rng.normal(size=(3, 5))
    _, cache = layers.layer_norm_forward(x, gamma, beta)
    dx, dgamma, _ = layers.layer_norm_backward(G, cache)

    def loss():
        return float((layers.layer_norm_forward(x, gamma, beta)[0] * G).sum())

    assert rel_error(dx, numerical_gradient(loss, x)) < TOL
    assert rel_error(dgamma, numerical_gradient(loss, gamma)) < TOL


def test_gelu(rng):
    x = rng.normal(size=(4, 6)) * 3
    out, cache = layers.gelu_forward(x)
    G = rng.normal(size=out.shape)
    dx = layers.gelu_backward(G, cache)
    x_t = t(x)
    out_t = F.gelu(x_t, approximate="tanh")
    out_t.backward(torch.from_numpy(G))
    assert_matches(out, out_t, "forward")
    assert_matches(dx, x_t.grad, "dx")


def test_sigmoid_is_stable():
    x = np.array([-1000.0, -3.0, 0.0, 3.0, 1000.0])
    with np.errstate(over="raise"):
        s = layers.sigmoid(x)
    np.testing.assert_allclose(s, torch.sigmoid(torch.from_numpy(x)).numpy(), rtol=1e-15)
