"""LoRA (Hu et al., 2021): fine-tune a frozen backbone through small low-rank updates of its attention projections.

Each chosen `nn.Linear` W becomes W x + (alpha / r) · B A x with A (r × in) and B (out × r); B starts at zero, so
training starts from the pretrained function exactly. Only A, B and the task head learn. `merge_lora` folds B A
into W, so a saved checkpoint is an ordinary model of the same shape as full fine-tuning gives (no adapter files,
no inference cost).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from lmforge.errors import CheckpointError, ConfigError

DEFAULT_TARGETS = ("qkv_proj", "o_proj")  # the attention projections of our BERT and GPT blocks


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.scale = alpha / r
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.drop(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    def merged(self) -> nn.Linear:
        out = copy.deepcopy(self.base)
        with torch.no_grad():
            out.weight += (self.lora_B @ self.lora_A * self.scale).to(out.weight.dtype)
        out.weight.requires_grad_(True)
        return out


def apply_lora(
    backbone: nn.Module,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.05,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
) -> int:
    """Freeze `backbone` and wrap its target linear layers; returns how many were wrapped."""
    if r < 1:
        raise ConfigError(f"the LoRA rank must be at least 1, got {r}")
    for p in backbone.parameters():
        p.requires_grad_(False)
    chosen = [
        (name, m)
        for name, m in backbone.named_modules()
        if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets
    ]
    if not chosen:
        raise ConfigError(f"the backbone has no layer named {', '.join(targets)} to adapt with LoRA")
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = backbone.get_submodule(parent_name) if parent_name else backbone
        setattr(parent, child, LoRALinear(module, r, alpha, dropout))
    return len(chosen)


def merge_lora(model: nn.Module) -> nn.Module:
    """A copy of `model` with every LoRA layer folded back into a plain linear layer."""
    out = copy.deepcopy(model)
    wrapped = [(name, m) for name, m in out.named_modules() if isinstance(m, LoRALinear)]
    for name, module in wrapped:
        parent_name, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent_name) if parent_name else out, child, module.merged())
    for p in out.parameters():
        p.requires_grad_(True)
    return out


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The A and B matrices of every LoRA layer, by their state-dict names (what a resumed run needs back)."""
    return {
        k: v.detach().cpu().clone()
        for k, v in model.state_dict().items()
        if k.endswith((".lora_A", ".lora_B"))
    }


def load_adapted(
    model: nn.Module, merged: dict[str, torch.Tensor], adapters: dict[str, torch.Tensor]
) -> None:
    """Put a LoRA run's saved state back into `model`, freshly wrapped around its pretrained backbone.

    A checkpoint holds W + s·BA merged, which cannot be split back into W and BA exactly, and loading it as the
    frozen base would count the update twice. So the base keeps the pretrained W the model was rebuilt with, A and
    B come from the train state (`adapters`), everything else (the head, the other frozen weights) from the merged
    checkpoint; a merged weight that is not W + s·BA means the backbone is not the one the run started from."""
    own = model.state_dict()
    if set(adapters) != {k for k in own if k.endswith((".lora_A", ".lora_B"))}:
        raise CheckpointError(
            "the checkpoint's LoRA adapters do not fit this model; resume with the options the run "
            "started with"
        )
    state = {}
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    for name, layer in layers.items():
        a, b = adapters[f"{name}.lora_A"], adapters[f"{name}.lora_B"]
        base = layer.base.weight.detach().cpu()
        if not torch.allclose(
            merged[f"{name}.weight"].cpu(), base + (b @ a * layer.scale).to(base.dtype), atol=1e-5
        ):
            raise CheckpointError("the --model backbone is not the one the run being resumed started from")
        state.update({f"{name}.lora_A": a, f"{name}.lora_B": b, f"{name}.base.weight": base})
        if layer.base.bias is not None:
            state[f"{name}.base.bias"] = merged[f"{name}.bias"]
    state.update({k: merged[k] for k in own if k not in state})
    model.load_state_dict(state)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
