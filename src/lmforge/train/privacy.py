"""DP-SGD with Opacus: differentially private training plugged into the one loop as a `TrainHook`.

    spec.hook = DPSGD(DPOptions(epsilon=8), n_examples=len(rows), cfg=cfg, objective=objective)

What it does, with Opacus doing the privacy-critical parts:

- the noise multiplier is calibrated to the target (epsilon, delta) for the planned steps at the sampling rate
  batch_size / N (`opacus.accountants.utils.get_noise_multiplier`, RDP accountant);
- batches are Poisson-sampled (each example in a batch with probability batch_size / N, `ShuffledEpochs.poisson`);
- per-example gradients (`GradSampleModule`), clipped to `max_grad_norm` and noised (`DPOptimizer`, mean loss over
  the expected batch size); only trainable parameters take part, so with LoRA the adapters and the head are what
  is trained privately (the frozen backbone is public);
- layers Opacus cannot handle are replaced where it has a drop-in replacement (nn.LSTM / nn.GRU by DPLSTM /
  DPGRU, whose weights keep the same names, so checkpoints load as ordinary models) and refused in one line
  otherwise (`ModuleValidator`);
- the epsilon spent so far (RDP accountant at the given delta) is logged with every step (`dp_epsilon`), kept in
  the run's result and checkpoint metrics, and written in the model card; the accountant's history is in the train
  state, so a resumed run keeps counting.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from lmforge.config import RunConfig
from lmforge.errors import ConfigError
from lmforge.extras import require
from lmforge.train.trainer import TrainHook

FEATURE = "DP-SGD (--dp-epsilon)"


@dataclass
class DPOptions:
    """The privacy target: (epsilon, delta)-differential privacy for the training examples, with per-example
    gradients clipped to max_grad_norm."""

    epsilon: float
    delta: float = 1e-5
    max_grad_norm: float = 1.0

    @classmethod
    def from_config(cls, cfg: RunConfig) -> DPOptions | None:
        t = cfg.train
        if t.dp_epsilon is None:
            return None
        return cls(epsilon=t.dp_epsilon, delta=t.dp_delta, max_grad_norm=t.dp_max_grad_norm)

    def validate(self, n_examples: int) -> None:
        if not self.epsilon > 0:
            raise ConfigError(f"--dp-epsilon must be positive, got {self.epsilon}")
        if not 0 < self.delta < 1 / n_examples:
            raise ConfigError(
                f"--dp-delta must be positive and below 1/N = {1 / n_examples:.3g} for {n_examples:,} training "
                f"examples (a larger delta allows leaking an example outright), got {self.delta}"
            )
        if not self.max_grad_norm > 0:
            raise ConfigError(f"--dp-max-grad-norm must be positive, got {self.max_grad_norm}")


@contextmanager
def _quiet_accountant():
    """Opacus warns when the best RDP order is at the edge of its default range: the epsilon it reports is then a
    (slightly loose) upper bound, which is what a privacy report may state."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
        yield


def _used_params_optimizer(base: type) -> type:
    """Opacus's DPOptimizer, clipping and noising only the parameters this batch's loss used: a task model keeps
    parts of its backbone that the task never runs (a BERT checkpoint's masked-LM head), which get no gradient at
    all, private or not (as in training without DP, the optimizer leaves them unchanged)."""

    class UsedParamsDPOptimizer(base):
        @property
        def params(self) -> list:
            every = super().params
            used = [p for p in every if getattr(p, "grad_sample", None) is not None]
            return used or every  # before the first backward pass and after zero_grad: all of them

        def pre_step(self, closure=None):
            try:
                return super().pre_step(closure)
            except RuntimeError as exc:
                if "called random operation while in randomness error mode" in str(exc):
                    raise ConfigError(
                        "DP-SGD cannot train this model: a layer without its own per-example gradient rule (a "
                        "LoRA adapter) applies dropout; set that dropout to 0"
                    ) from None
                if "stack expects each tensor to be equal size" not in str(exc):
                    raise
                raise ConfigError(
                    "DP-SGD cannot train this model: one of its layers runs without a batch dimension (e.g. a "
                    "GPT's learned position embeddings), so Opacus cannot tell one example's gradient from another's"
                ) from None

    return UsedParamsDPOptimizer


class DPSGD(TrainHook):
    """DP-SGD for a run whose objective draws examples (a `ShuffledEpochs`)."""

    def __init__(self, options: DPOptions, n_examples: int, cfg: RunConfig, objective):
        options.validate(n_examples)
        t = cfg.train
        if t.grad_accum != 1:
            raise ConfigError("DP-SGD draws one Poisson-sampled batch per step; leave train.grad_accum at 1")
        if t.precision == "fp16":
            raise ConfigError(
                "DP-SGD does not run with fp16 loss scaling; use --train.precision fp32 or bf16"
            )
        if t.compile == "true":
            raise ConfigError("DP-SGD's per-example gradient hooks do not run under torch.compile; drop it")
        if t.batch_size >= n_examples:
            raise ConfigError(
                f"DP-SGD samples batches from the training set: --batch-size ({t.batch_size}) must be smaller "
                f"than the number of training examples ({n_examples:,})"
            )
        t.compile = "false"
        accountants = require("opacus.accountants", extra="privacy", feature=FEATURE)
        utils = require("opacus.accountants.utils", extra="privacy", feature=FEATURE)
        self.options = options
        self.n_examples = n_examples
        self.sample_rate = t.batch_size / n_examples
        self.steps = t.max_steps
        try:
            with _quiet_accountant():
                self.noise_multiplier = utils.get_noise_multiplier(
                    target_epsilon=options.epsilon,
                    target_delta=options.delta,
                    sample_rate=self.sample_rate,
                    steps=self.steps,
                    accountant="rdp",
                )
        except ValueError:
            raise ConfigError(
                f"no noise level reaches epsilon {options.epsilon} in {self.steps:,} steps at delta "
                f"{options.delta}; raise --dp-epsilon or train fewer steps"
            ) from None
        self.accountant = accountants.RDPAccountant()
        self.dropouts_off = 0  # dropouts inside layers whose per-example gradients come from torch.func
        objective.poisson(self.sample_rate)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        validators = require("opacus.validators", extra="privacy", feature=FEATURE)
        check = validators.ModuleValidator
        errors = check.validate(model, strict=False)
        if errors:
            model = check.fix(model)  # nn.LSTM / nn.GRU -> DPLSTM / DPGRU (same parameter names)
            errors = check.validate(model, strict=False)
        if errors:
            reason = str(errors[0]).strip().split("\n")[0].rstrip(".")
            raise ConfigError(f"DP-SGD cannot train this model: Opacus says {reason}")
        # A trainable layer without its own per-example rule in Opacus (a LoRA adapter) gets its per-example
        # gradients from torch.func, which recomputes its forward pass: a dropout inside it would draw another mask
        # there (and vmap refuses random operations), so it is switched off under DP-SGD.
        samplers = require("opacus", extra="privacy", feature=FEATURE).GradSampleModule.GRAD_SAMPLERS
        for layer in list(model.modules()):
            if type(layer) in samplers or not any(p.requires_grad for p in layer.parameters(recurse=False)):
                continue
            for parent in list(layer.modules()):
                for key, sub in list(parent.named_children()):
                    if isinstance(sub, nn.Dropout):
                        setattr(parent, key, nn.Identity())
                        self.dropouts_off += 1
        return model

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        opacus = require("opacus", extra="privacy", feature=FEATURE)
        try:
            private = opacus.GradSampleModule(model, batch_first=True, loss_reduction="mean")
        except NotImplementedError as exc:
            reason = str(exc).strip().split("\n")[0].rstrip(".")
            raise ConfigError(f"DP-SGD cannot train this model: Opacus says {reason}") from None
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        dp_optimizer = _used_params_optimizer(opacus.optimizers.DPOptimizer)(
            optimizer,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.options.max_grad_norm,
            expected_batch_size=max(1, round(self.sample_rate * self.n_examples)),
            loss_reduction="mean",
        )
        return private, dp_optimizer

    def spent(self) -> float:
        if not self.accountant.history:
            return 0.0
        with _quiet_accountant():
            return float(self.accountant.get_epsilon(self.options.delta))

    def after_step(self, step: int) -> dict:
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        return {"dp_epsilon": self.spent(), "dp_delta": self.options.delta}

    def describe(self) -> str:
        return f"; privacy spent: epsilon {self.spent():.2f} of {self.options.epsilon:g} (delta {self.options.delta:g})"

    def card(self) -> list[str]:
        o = self.options
        return [
            f"- differential privacy: DP-SGD (Opacus), (epsilon {self.spent():.2f}, delta {o.delta:g}) spent of the "
            f"target epsilon {o.epsilon:g} planned for {self.steps:,} steps; noise multiplier "
            f"{self.noise_multiplier:.3f}, per-example gradients clipped to {o.max_grad_norm:g}, Poisson sampling "
            f"at rate {self.sample_rate:.4g} ({self.n_examples:,} examples); RDP accountant"
            + (f"; {self.dropouts_off} adapter dropout layers switched off" if self.dropouts_off else "")
        ]

    def state_dict(self) -> dict:
        return {"dp_history": list(self.accountant.history)}

    def load_state_dict(self, state: dict) -> None:
        self.accountant.history = list(state.get("dp_history", []))
