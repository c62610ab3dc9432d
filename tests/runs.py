"""Helpers the training tests share: read a run's loss curve, and check that resuming reproduces a run."""

import json
import shutil

import torch

import lmforge
from lmforge import checkpoint as ckpt


def losses(run_dir):
    return [
        r["loss"]
        for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]


def assert_resume_is_exact(data, tmp_path, arch=None, overrides=None, steps=20, stop_after=14):
    """Train `steps` steps; train again but cut the run after its `stop_after` checkpoint and resume it: the loss
    curves and the final weights must be equal to the last bit. (Give overrides that save at `stop_after`.)"""
    full, part = tmp_path / "full", tmp_path / "part"
    for run in (full, part):
        lmforge.pretrain(data, run, arch=arch, overrides=overrides, max_steps=steps, progress=False)
    for step, path in ckpt.list_checkpoints(part):
        if step > stop_after:
            shutil.rmtree(path)
    ckpt.point(part, "latest", part / f"ckpt-{stop_after:07d}")
    lmforge.pretrain(data, part, resume=True, progress=False)
    assert losses(part) == losses(full)  # exact float equality, every step
    a, b = lmforge.load(full).model.state_dict(), lmforge.load(part).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
