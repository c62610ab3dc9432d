"""`eval_mode(model)`: evaluate in eval mode (dropout off), then restore the mode the model was in, even when the
evaluation raises. Validation runs in the middle of training, so the restore matters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
