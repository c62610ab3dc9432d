"""Train a tiny character-level LSTM language model on one paragraph, in pure NumPy.

    python -m lmforge.reference.train_char_lstm                # default: 200 steps, a few seconds on a CPU
    python -m lmforge.reference.train_char_lstm --steps 1000 --print-every 100

The model, every gradient and the optimizer are the functions of `lmforge.reference` — no autograd anywhere:

    ids (B, T) --embedding--> x (B, T, E) --LSTM--> h (B, T, H) --affine--> logits (B, T, V)
    loss = softmax cross-entropy of the logits against the same text shifted by one character

One training step: forward, loss, backward (in exactly the reverse order), clip the gradient norm, Adam update.
Before training every character is equally likely, so the loss starts near log(V); it falls as the model learns
which characters follow which.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from lmforge.reference.layers import (
    affine_backward,
    affine_forward,
    embedding_backward,
    embedding_forward,
    softmax,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from lmforge.reference.recurrent import init_params, lstm_backward, lstm_forward, lstm_step_forward

PARAGRAPH = (
    "A language model reads text one symbol at a time and guesses the next one. At first its guesses are "
    "uniform: every letter is as likely as every other. Each mistake sends a gradient back through the network, "
    "through every step it has read, and nudges the weights a little. After a few hundred nudges the model has "
    "learned that a space follows a word, that a full stop is followed by a space and a capital letter, and that "
    "this paragraph begins with the letter A. It has not understood anything; it has only made the text it saw "
    "a little less surprising."
)


class CharLSTM:
    """Embedding -> LSTM -> affine, with its parameters in one dict so an optimizer can treat them alike."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, rng: np.random.Generator):
        self.params = {"emb": rng.normal(0.0, 0.1, size=(vocab_size, embed))}
        self.params.update(init_params("lstm", embed, hidden, rng))  # W_x, W_h, b
        self.params["W_out"] = rng.normal(0.0, 1.0 / math.sqrt(hidden), size=(hidden, vocab_size))
        self.params["b_out"] = np.zeros(vocab_size)
        self.hidden = hidden

    def loss_and_grads(self, inputs: np.ndarray, targets: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Forward pass, loss, and the backward pass in reverse order. inputs, targets: (B, T) integer ids."""
        p = self.params
        B = inputs.shape[0]
        zeros = np.zeros((B, self.hidden))
        x, cache_emb = embedding_forward(inputs, p["emb"])
        h, _, cache_lstm = lstm_forward(x, zeros, zeros, p)
        logits, cache_out = affine_forward(h, p["W_out"], p["b_out"])
        loss, cache_loss = softmax_cross_entropy_forward(logits, targets)

        grads = {}
        dlogits = softmax_cross_entropy_backward(1.0, cache_loss)
        dh, grads["W_out"], grads["b_out"] = affine_backward(dlogits, cache_out)
        dx, _, _, lstm_grads = lstm_backward(dh, cache_lstm)
        grads.update(lstm_grads)
        grads["emb"] = embedding_backward(dx, cache_emb)
        return loss, grads

    def sample(
        self, start_id: int, length: int, rng: np.random.Generator, temperature: float = 0.5
    ) -> list[int]:
        """Generate `length` ids after `start_id`, one LSTM step at a time, sampling from softmax(logits / T)."""
        p = self.params
        h = c = np.zeros((1, self.hidden))
        ids = [start_id]
        for _ in range(length):
            h, c, _ = lstm_step_forward(p["emb"][[ids[-1]]], h, c, p)
            probs = softmax((h @ p["W_out"] + p["b_out"])[0] / temperature)
            ids.append(int(rng.choice(len(probs), p=probs)))
        return ids


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale all gradients down together when their joint L2 norm exceeds max_norm (tames exploding BPTT
    gradients). Returns the norm before clipping."""
    norm = math.sqrt(sum(float((g**2).sum()) for g in grads.values()))
    if norm > max_norm:
        for g in grads.values():
            g *= max_norm / norm
    return norm


class Adam:
    """Adam (Kingma & Ba, 2015), for every parameter p with gradient g, at step t = 1, 2, ...:

    m = beta1 m + (1 - beta1) g                   running mean of the gradient
    v = beta2 v + (1 - beta2) g^2                 running mean of its square
    m_hat = m / (1 - beta1^t)                     bias corrections (m and v start at 0)
    v_hat = v / (1 - beta2^t)
    p = p - lr * m_hat / (sqrt(v_hat) + eps)      a step of about lr in every coordinate
    """

    def __init__(self, params, lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.params, self.lr, self.beta1, self.beta2, self.eps = params, lr, beta1, beta2, eps
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        for k, p in self.params.items():
            g = grads[k]
            self.m[k] = self.beta1 * self.m[k] + (1 - self.beta1) * g
            self.v[k] = self.beta2 * self.v[k] + (1 - self.beta2) * g**2
            m_hat = self.m[k] / (1 - self.beta1**self.t)
            v_hat = self.v[k] / (1 - self.beta2**self.t)
            p -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)  # in place: the model sees the new values


def train(
    text: str = PARAGRAPH,
    steps: int = 200,
    batch_size: int = 16,
    seq_len: int = 24,
    embed: int = 16,
    hidden: int = 64,
    lr: float = 2e-2,
    clip: float = 5.0,
    seed: int = 0,
    print_every: int = 20,
    sample_length: int = 120,
    out=None,
) -> list[float]:
    """Train on random windows of `text`; print the loss every `print_every` steps (0: never) and a sample at the
    end (sample_length=0: none), to `out` (default: stdout). Returns the loss of every step."""
    out = out or sys.stdout
    rng = np.random.default_rng(seed)
    chars = sorted(set(text))
    index = {ch: i for i, ch in enumerate(chars)}
    data = np.array([index[ch] for ch in text])
    model = CharLSTM(len(chars), embed, hidden, rng)
    optimizer = Adam(model.params, lr=lr)
    if print_every:
        print(
            f"{len(text)} characters, vocabulary {len(chars)}, uniform loss log(V) = {math.log(len(chars)):.3f}",
            file=out,
        )

    history = []
    for step in range(1, steps + 1):
        # A batch: random windows of seq_len + 1 characters; the targets are the inputs shifted by one.
        starts = rng.integers(0, len(data) - seq_len - 1, size=batch_size)
        windows = np.stack([data[s : s + seq_len + 1] for s in starts])
        loss, grads = model.loss_and_grads(windows[:, :-1], windows[:, 1:])
        clip_grad_norm(grads, clip)
        optimizer.step(grads)
        history.append(loss)
        if print_every and (step == 1 or step % print_every == 0):
            print(f"step {step:5d}  loss {loss:.4f}", file=out)

    if sample_length:
        ids = model.sample(index[text[0]], sample_length, rng)
        print("sample: " + "".join(chars[i] for i in ids), file=out)
    return history


def main(argv: list[str] | None = None) -> list[float]:
    """Command line entry point; options left out keep the defaults of `train`. Returns the loss history."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], argument_default=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--print-every", type=int, help="print the loss every N steps (0: never)")
    return train(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
