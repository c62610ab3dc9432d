"""DP-SGD with Opacus: differentially private training plugged into the one loop as a `TrainHook`.

    spec.hook = DPSGD(DPOptions(epsilon=8), n_examples=len(rows), cfg=cfg, objective=objective)
    objective, hook = private_training(cfg, objective, n_examples=len(rows))  # a causal LM's labelled rows
    objective, hook = private_pretraining(cfg, "clm", train_shards)          # a GPT on a token split

What it does, with Opacus doing the privacy-critical parts:

- the noise multiplier is calibrated to the target (epsilon, delta) for the planned steps at the sampling rate
  batch_size / N (`opacus.accountants.utils.get_noise_multiplier`, RDP accountant);
- batches are Poisson-sampled (each example in a batch with probability batch_size / N, `ShuffledEpochs.poisson`);
- per-example gradients (`GradSampleModule`), clipped to `max_grad_norm` and noised (`DPOptimizer`, mean loss over
  the expected batch size); only trainable parameters take part, so with LoRA the adapters and the head are what
  is trained privately (the frozen backbone is public); a LoRA adapter's per-example gradients are computed in
  closed form (`lora_grad_sample`, registered with Opacus) rather than by torch.func, which re-ran the frozen
  projection inside every adapter (MiniLM, 8 steps of 256 in fp32: 32 s against 46 s; benchmarks/RESULTS.md);
- layers Opacus cannot handle are replaced where it has a drop-in replacement (nn.LSTM / nn.GRU by DPLSTM /
  DPGRU, whose weights keep the same names, so checkpoints load as ordinary models) and refused in one line
  otherwise (`ModuleValidator`);
- a language model's loss is each example's mean token loss, summed over the batch (`PerExampleLoss`): each
  example's gradient is then its own, whatever else was drawn with it (a batch-wide token count would let one
  example change the scale of every other's gradient, and the clipping bound would no longer bound it);
- pretraining draws from fixed, non-overlapping windows of block_size tokens (`PrivateWindows`): a window is the
  privacy unit (text repeated in k windows, like a secret written k times, is protected at group level k, i.e.
  about k * epsilon), where plain pretraining reads overlapping windows at random offsets;
- the epsilon spent so far (RDP accountant at the given delta) is logged with every step (`dp_epsilon`), kept in
  the run's result and checkpoint metrics, and written in the model card; the accountant's history is in the train
  state, so a resumed run keeps counting.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import RunConfig, switch
from lmforge.data.shards import TokenShards
from lmforge.errors import ConfigError, DataError
from lmforge.extras import require
from lmforge.train.labels import IGNORE_INDEX
from lmforge.train.lora import LoRALinear
from lmforge.train.objectives import ShuffledEpochs
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

    def __init__(self, options: DPOptions, n_examples: int, cfg: RunConfig, objective, notes: list[str] = ()):
        options.validate(n_examples)
        t = cfg.train
        if switch("train.pack", t.pack) == "true":
            raise ConfigError(
                "DP-SGD protects one example at a time; train.pack puts several in one row: drop --train.pack"
            )
        if t.group_by_length:
            raise ConfigError(
                "DP-SGD draws Poisson-sampled batches, which cannot be grouped by length: drop "
                "train.group_by_length"
            )
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
        self.notes = list(notes)  # more model-card lines (where the weights came from)
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
        for module in model.modules():  # learned positions need the batch dimension (models/gpt.py)
            if hasattr(module, "batched_positions"):
                module.batched_positions = True
        # A trainable layer without its own per-example rule in Opacus gets its per-example gradients from
        # torch.func, which recomputes its forward pass: a dropout inside it would draw another mask there (and vmap
        # refuses random operations), so it is switched off under DP-SGD. A LoRA adapter's closed-form rule sees
        # the adapter's input before its dropout, so that dropout is switched off too.
        opacus = require("opacus", extra="privacy", feature=FEATURE)
        samplers = opacus.GradSampleModule.GRAD_SAMPLERS
        if LoRALinear not in samplers:
            opacus.grad_sample.register_grad_sampler(LoRALinear)(lora_grad_sample)
        for layer in list(model.modules()):
            if not any(p.requires_grad for p in layer.parameters(recurse=False)):
                continue
            if type(layer) in samplers and not isinstance(layer, LoRALinear):
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
        ] + self.notes

    def state_dict(self) -> dict:
        return {"dp_history": list(self.accountant.history)}

    def load_state_dict(self, state: dict) -> None:
        self.accountant.history = list(state.get("dp_history", []))


def lora_grad_sample(layer: LoRALinear, activations: list, backprops: torch.Tensor) -> dict:
    """Per-example gradients of a LoRA adapter's A and B, in closed form (Opacus's grad-sampler signature).

    The adapter adds s · (x Aᵀ) Bᵀ to the frozen projection, so with g the gradient of the layer's output,
    grad B[n] = s · Σ_t g[n,t]ᵀ (x[n,t] Aᵀ) and grad A[n] = s · Σ_t (g[n,t] B)ᵀ x[n,t]: two small einsums over rank r,
    in fp32 whatever the autocast dtype (the parameters and their gradients are fp32). Requires the adapter's
    dropout to be off (DPSGD.prepare_model switches it off), since x here is the adapter's input.
    """
    x = activations[0].float()
    g = backprops.float()
    out = {}
    if layer.lora_B.requires_grad:
        out[layer.lora_B] = torch.einsum("n...o,n...r->nor", g, x @ layer.lora_A.t()) * layer.scale
    if layer.lora_A.requires_grad:
        out[layer.lora_A] = torch.einsum("n...r,n...i->nri", g @ layer.lora_B, x) * layer.scale
    return out


class PerExampleLoss:
    """A causal LM's objective under DP-SGD: the same batches, each example's mean token loss summed over the batch,
    one target counted per example (so the trainer's loss is the mean over examples). Every example's gradient
    then depends on that example only, which is what per-example clipping bounds."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name

    def poisson(self, rate: float) -> None:
        self.inner.poisson(rate)

    def next_batch(self, generator: torch.Generator):
        return self.inner.next_batch(generator)

    @staticmethod
    def count_targets(batch) -> torch.Tensor:
        return torch.tensor(batch[0].shape[0])

    @staticmethod
    def loss_sum(model: nn.Module, batch) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = model(x)
        per_token = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)),
            y.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        ).view(y.shape)
        return (per_token.sum(1) / (y != IGNORE_INDEX).sum(1).clamp(min=1)).sum()

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, d: dict, device: torch.device) -> None:
        self.inner.load_state_dict(d, device)


class PrivateWindows(ShuffledEpochs):
    """Next-token prediction on the fixed, non-overlapping windows of block_size tokens (plus the next one, the
    last target) of a token split: each window is one example, Poisson-sampled by DP-SGD."""

    name = "clm"

    def __init__(self, data: TokenShards, block_size: int, batch_size: int):
        data.check_block_size(block_size)
        self.arrays = data.arrays
        per_shard = [max(0, (len(a) - 1) // block_size) for a in self.arrays]
        self.shard = np.repeat(np.arange(len(per_shard)), per_shard)
        self.start = np.concatenate([np.arange(n) * block_size for n in per_shard]).astype(np.int64)
        if len(self.start) < 2:
            raise DataError(
                f"the training split has {len(self.start)} window(s) of {block_size} tokens: DP-SGD needs many "
                "examples; use more text or a smaller model.block_size"
            )
        self.block_size = block_size
        super().__init__(len(self.start), batch_size)

    def next_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = self.next_indices(generator)
        offsets = np.arange(self.block_size + 1)
        rows = np.stack([np.asarray(self.arrays[self.shard[i]][self.start[i] + offsets]) for i in chosen])
        t = torch.from_numpy(rows.astype(np.int64))
        return t[:, :-1], t[:, 1:]


def private_training(
    cfg: RunConfig, objective, n_examples: int, notes: list[str] = ()
) -> tuple[object, DPSGD | None]:
    """The objective and hook of a causal-LM run over `n_examples` examples: unchanged and None without
    train.dp_epsilon; else the per-example loss and the DP-SGD hook (which switches the objective to Poisson
    sampling)."""
    options = DPOptions.from_config(cfg)
    if options is None:
        return objective, None
    objective = PerExampleLoss(objective)
    return objective, DPSGD(options, n_examples, cfg, objective, notes=notes)


def private_pretraining(
    cfg: RunConfig, objective_name: str, data: TokenShards, notes: list[str] = ()
) -> tuple[PerExampleLoss, DPSGD]:
    """DP-SGD pretraining (or continued pretraining) of a causal LM on a token split, over its fixed windows."""
    if objective_name != "clm":
        raise ConfigError(
            f"DP-SGD pretraining is for causal language models (gpt); this model trains with {objective_name} "
            "(masked-LM, span corruption and recurrent TBPTT are not supported)"
        )
    windows = PrivateWindows(data, cfg.model.block_size, cfg.train.batch_size)
    objective, hook = private_training(cfg, windows, windows.n_examples, notes)
    return objective, hook
