"""The pure-NumPy training run: a character LSTM on one paragraph must actually learn."""

import io
import math

import numpy as np

from lmforge.reference import train_char_lstm
from lmforge.reference.gradcheck import numerical_gradient, rel_error


def test_char_lstm_loss_falls_by_half():
    history = train_char_lstm.train(print_every=0, sample_length=0)  # the defaults of the demo
    vocab = len(set(train_char_lstm.PARAGRAPH))
    assert abs(history[0] - math.log(vocab)) < 0.1  # an untrained model: about uniform over the characters
    assert np.mean(history[-10:]) <= 0.5 * history[0], f"first {history[0]:.3f}, last {history[-10:]}"


def test_model_gradients_match_finite_differences():
    """The whole model (embedding, LSTM, affine, cross-entropy) chained together, checked numerically on a
    small model: the demo's gradients are the real gradients of its loss."""
    rng = np.random.default_rng(0)
    model = train_char_lstm.CharLSTM(vocab_size=5, embed=3, hidden=4, rng=rng)
    ids = rng.integers(0, 5, size=(2, 4))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    _, grads = model.loss_and_grads(inputs, targets)
    for name, p in model.params.items():
        numeric = numerical_gradient(lambda: model.loss_and_grads(inputs, targets)[0], p)
        assert rel_error(grads[name], numeric) < 1e-6, name


def test_adam_and_clipping():
    params = {"w": np.array([1.0, -2.0])}
    opt = train_char_lstm.Adam(params, lr=0.1)
    opt.step({"w": np.array([0.5, -3.0])})
    # The first Adam step moves every coordinate by lr against the sign of its gradient.
    np.testing.assert_allclose(params["w"], [0.9, -1.9], rtol=1e-6)
    grads = {"a": np.array([3.0]), "b": np.array([4.0])}
    assert train_char_lstm.clip_grad_norm(grads, 1.0) == 5.0
    np.testing.assert_allclose([grads["a"][0], grads["b"][0]], [0.6, 0.8])


def test_main_prints_the_loss_and_returns_the_history(capsys):
    history = train_char_lstm.main(["--steps", "4", "--print-every", "2", "--hidden", "8"])
    out = capsys.readouterr().out
    assert len(history) == 4 and all(math.isfinite(x) for x in history)
    assert "step     2  loss" in out and "step     4  loss" in out and "step     3" not in out
    assert "sample: " in out


def test_training_is_deterministic_for_a_seed():
    kw = dict(steps=3, hidden=8, print_every=0, sample_length=0, out=io.StringIO())
    assert train_char_lstm.train(seed=1, **kw) == train_char_lstm.train(seed=1, **kw)
    assert train_char_lstm.train(seed=1, **kw) != train_char_lstm.train(seed=2, **kw)
