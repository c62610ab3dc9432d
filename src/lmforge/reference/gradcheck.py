"""Tools to check a hand-written backward pass: a relative error and a finite-difference gradient."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def rel_error(a, b, tiny: float = 1e-300) -> float:
    """max |a - b| / max(|a| + |b|): 0 for identical arrays, about 1 when they are unrelated.

    Relative to the size of the values, so it means the same for tiny and for huge gradients. In float64 a
    correct backward pass agrees with another correct one (e.g. PyTorch autograd) to about 1e-12..1e-15; a wrong
    formula usually shows up as 1e-3 or worse."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a) + np.abs(b))), tiny))


def numerical_gradient(f: Callable[[], float], x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """dL/dx by central differences, one entry at a time: (f(x + h e_i) - f(x - h e_i)) / 2h.

    `f` takes no arguments and reads `x`, which is changed in place and restored. The error of the estimate is
    about h^2 (truncation) + 1e-16 / h (rounding), so expect agreement to ~1e-8, not to 1e-14. Slow (two forward
    passes per entry): use it on small shapes."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        plus = f()
        x[i] = old - h
        minus = f()
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def assert_matches(ours, theirs, name: str = "", tol: float = 1e-6) -> None:
    """Assert that `ours` equals a reference (a NumPy array or a torch tensor) to relative error `tol`.

    A reference that is all zeros would prove nothing, so it is refused."""
    if hasattr(theirs, "detach"):
        theirs = theirs.detach().numpy()
    theirs = np.asarray(theirs)
    assert np.shape(ours) == theirs.shape, f"{name}: shape {np.shape(ours)} != {theirs.shape}"
    assert np.abs(theirs).max() > 0, f"{name}: reference is all zeros, the comparison would prove nothing"
    err = rel_error(ours, theirs)
    assert err < tol, f"{name}: relative error {err:.2e}"
