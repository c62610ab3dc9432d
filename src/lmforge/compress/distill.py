"""Knowledge distillation of a causal language model into a smaller student (Hinton et al., 2015).

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, next token)

summed over the predicted tokens. T^2 keeps the soft term's gradients on the scale of the hard term's as T grows.
The student is built from a preset with the teacher's tokenizer (the data must be tokenized with it too) and
trained by the one training loop: `DistillLM` is an ordinary training objective that holds the frozen teacher,
and the run is pretraining's run specification (tasks/lm/run.py) with that objective swapped in. Checkpoints,
validation (the student's own next-token perplexity) and the model card are pretraining's.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmforge import checkpoint as ckpt
from lmforge.compress.quantize import tokens_per_second
from lmforge.config import build_run_config, parse_overrides
from lmforge.data.shards import load_prepared
from lmforge.errors import ConfigError, TokenizerError
from lmforge.eval.perplexity import evaluate
from lmforge.lm import load
from lmforge.models.registry import is_statistical
from lmforge.tasks.lm.run import pretrain_spec
from lmforge.train.labels import IGNORE_INDEX
from lmforge.train.objectives import CausalLM
from lmforge.train.trainer import RunResult, Trainer


def distill_loss_sum(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """The distillation loss summed over the tokens whose target is not IGNORE_INDEX."""
    keep = targets.reshape(-1) != IGNORE_INDEX
    s = student_logits.float().reshape(-1, student_logits.size(-1))[keep]
    t = teacher_logits.float().reshape(-1, teacher_logits.size(-1))[keep]
    soft = F.kl_div(
        F.log_softmax(s / temperature, -1),
        F.log_softmax(t / temperature, -1),
        log_target=True,
        reduction="sum",
    )
    hard = F.cross_entropy(s, targets.reshape(-1)[keep], reduction="sum")
    return alpha * temperature**2 * soft + (1 - alpha) * hard


class DistillLM(CausalLM):
    """Causal LM windows scored against a frozen teacher's soft targets as well as the next tokens."""

    name = "distill"

    def __init__(
        self, data, model_cfg, batch_size: int, teacher: nn.Module, temperature: float, alpha: float
    ):
        super().__init__(data, model_cfg, batch_size)
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha

    def loss_sum(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        if next(self.teacher.parameters()).device != x.device:
            self.teacher.to(x.device)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return distill_loss_sum(model(x), teacher_logits, y, self.temperature, self.alpha)


# Distillation has no --resume: the checkpoint saved on an interrupt is a usable student as it is.
NO_RESUME = (
    "a distillation does not resume: the checkpoint is a usable student, or run `lmforge distill` again"
)


def check_settings(temperature: float, alpha: float) -> None:
    if not temperature > 0:
        raise ConfigError(f"--temperature must be > 0, got {temperature}")
    if not 0 <= alpha <= 1:
        raise ConfigError(f"--alpha must be in [0, 1], got {alpha}")


def run_overrides(
    overrides: dict | list[str] | None, max_steps: int | None, max_minutes: float | None
) -> dict:
    """The --model.* / --optim.* / --train.* overrides as a dict, with --max-steps and --max-minutes in it."""
    overrides = parse_overrides(overrides)
    if max_steps is not None:
        overrides["train.max_steps"] = max_steps
    if max_minutes is not None:
        overrides["train.max_minutes"] = max_minutes
    return overrides


def load_teacher(teacher: str | os.PathLike, data: str | os.PathLike):
    """The teacher LM (on the CPU), checked to be a causal neural LM that reads the data's tokens."""
    config = ckpt.read_config(ckpt.resolve_checkpoint(teacher))
    if config.get("arch") == "classifier":
        raise ConfigError(
            f"{teacher} is a fine-tuned classifier; give its labelled --train file (and --dev) "
            "instead of --data to distill it"
        )
    if config.get("arch") and is_statistical(config["arch"]):
        raise ConfigError(f"{teacher} is an n-gram model; distill from a neural language model")
    lm = load(teacher, device="cpu")
    if getattr(lm.model.config, "objective", "clm") != "clm":
        raise ConfigError(f"{teacher} is not a causal language model; distillation needs next-token logits")
    _, tokenizer = load_prepared(Path(data))
    if tokenizer.sha256() != lm.tokenizer.sha256():
        raise TokenizerError(
            f"{data} was tokenized differently from the teacher {teacher}; prepare the data with "
            f"--tokenizer {lm.path}/tokenizer.json"
        )
    return lm


def distill(
    teacher: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    student_preset: str,
    overrides: dict | list[str] | None = None,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    temperature: float = 2.0,
    alpha: float = 0.5,
    progress: bool = True,
) -> RunResult:
    """Train a `student_preset` GPT on a prepared data directory against the teacher checkpoint; runs go to `out`."""
    check_settings(temperature, alpha)
    run_dir = ckpt.require_new_run_dir(out)
    lm = load_teacher(teacher, data)
    cfg = build_run_config(preset=student_preset, overrides=run_overrides(overrides, max_steps, max_minutes))
    if cfg.arch != "gpt":
        raise ConfigError(
            f"preset {student_preset!r} is a {cfg.arch} model; the student must be a GPT preset"
        )
    if cfg.model.block_size > lm.model.config.block_size:
        # The teacher cannot score windows longer than its own context.
        cfg.model.block_size = lm.model.config.block_size
    spec = pretrain_spec(cfg, data)
    objective = DistillLM(spec.objective.data, cfg.model, cfg.train.batch_size, lm.model, temperature, alpha)
    spec = dataclasses.replace(spec, objective=objective, resume_hint=NO_RESUME)
    return Trainer(cfg, spec, run_dir, progress=progress).run()


def side_by_side(teacher: str | os.PathLike, student: str | os.PathLike, data: str | os.PathLike) -> dict:
    """Parameters, validation perplexity and greedy tokens/s of the teacher and the student."""
    out = {}
    for name, path in (("teacher", teacher), ("student", student)):
        lm = load(path, device="cpu")
        out[name] = {
            "path": str(lm.path),
            "parameters": lm.model.num_params(),
            "val_perplexity": evaluate(lm, data)["perplexity"],
            "tokens_per_s": tokens_per_second(lm),
        }
    return out
