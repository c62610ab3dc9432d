"""The warm-up of the learning-rate schedule: capped at a quarter of the run (with one note in the run's log), or a
ratio of it."""

from __future__ import annotations

import math
import warnings

import pytest

import lmforge
from lmforge.config import OptimConfig, build_run_config
from lmforge.errors import ConfigError
from lmforge.train.optim import MAX_WARMUP_FRACTION, lr_at, warmup_for, warmup_note


def reference_lr(step: int, lr: float, warmup: int, max_steps: int, min_ratio: float, schedule: str) -> float:
    """The schedule written out: linear warm-up over `warmup` steps, then cosine or linear decay to the end."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    low = lr * min_ratio
    if schedule == "linear":
        return lr - (lr - low) * progress
    return low + 0.5 * (lr - low) * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_a_warmup_that_fits_is_unchanged(schedule):
    cfg = OptimConfig(lr=1e-3, warmup_steps=100, schedule=schedule)  # the default 100 of a 2000-step run
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either
        got = [lr_at(s, cfg, 2000) for s in range(2000)]
    assert got == [reference_lr(s, 1e-3, 100, 2000, cfg.min_lr_ratio, schedule) for s in range(2000)]
    assert warmup_for(cfg, 400) == 100  # exactly a quarter still fits


def test_a_warmup_longer_than_a_quarter_of_the_run_is_capped_with_one_note(char_data, tmp_path, capsys):
    cfg = OptimConfig(lr=1e-3, warmup_steps=101)
    lrs = [lr_at(s, cfg, 60) for s in range(60)]
    cap = int(MAX_WARMUP_FRACTION * 60)
    assert cap == 15 and warmup_for(cfg, 60) == 15
    assert lrs[cap - 1] == pytest.approx(1e-3) and max(lrs) == pytest.approx(1e-3)  # the run reaches its lr
    assert lrs == [reference_lr(s, 1e-3, 15, 60, cfg.min_lr_ratio, "cosine") for s in range(60)]
    message = warmup_note(cfg, 60)
    assert "\n" not in message and "--optim.warmup_steps" in message and "--optim.warmup_ratio" in message
    assert "warming up for 15" in message and warmup_note(OptimConfig(warmup_steps=15), 60) is None
    # a run says it once, in its log
    overrides = {"model.n_layer": 1, "model.n_embd": 16, "model.n_head": 2, "model.block_size": 16}
    overrides.update({"train.batch_size": 4, "train.tensorboard": False, "optim.warmup_steps": 50})
    lmforge.pretrain(char_data, tmp_path / "run", overrides=overrides, max_steps=8)
    assert (
        capsys.readouterr().err.count("note: optim.warmup_steps 50 is over a quarter of the run's 8 steps")
        == 1
    )


def test_warmup_ratio_is_a_fraction_of_the_run_and_wins_over_warmup_steps():
    cfg = OptimConfig(lr=2e-3, warmup_steps=100, warmup_ratio=0.1, schedule="linear", min_lr_ratio=0.0)
    assert warmup_for(cfg, 60) == 6 and warmup_for(cfg, 2000) == 200
    assert [lr_at(s, cfg, 60) for s in range(60)] == [
        reference_lr(s, 2e-3, 6, 60, 0.0, "linear") for s in range(60)
    ]
    assert warmup_for(OptimConfig(warmup_ratio=0.0), 500) == 0


def test_a_schedule_shortened_by_a_time_limit_keeps_its_warmup():
    cfg = OptimConfig(lr=1e-3, warmup_steps=100, schedule="linear", min_lr_ratio=0.0)
    # Past the warm-up of a 2000-step run, a time limit shrinks the schedule to 150 steps: the decay starts from the
    # full rate (no jump), as the warm-up stays the 100 steps the run started with.
    assert lr_at(100, cfg, 150, run_steps=2000) == pytest.approx(1e-3)
    assert lr_at(125, cfg, 150, run_steps=2000) == pytest.approx(0.5e-3)


@pytest.mark.parametrize("ratio", [-0.1, 1.5])
def test_warmup_ratio_outside_0_1_is_refused(ratio):
    with pytest.raises(ConfigError, match=r"optim.warmup_ratio must be in \[0, 1\]"):
        build_run_config(arch="gpt", preset="tiny", overrides={"optim.warmup_ratio": ratio})
    cfg = build_run_config(arch="gpt", preset="tiny", overrides={"optim.warmup_ratio": "0.05"})
    assert cfg.optim.warmup_ratio == 0.05
