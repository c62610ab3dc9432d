"""A loaded model put into its inference precision: weights cast to bf16 or fp16, and on a CPU the Linear layers'
bf16 weights pre-packed for oneDNN's matrix kernels, which batch-1 decoding needs to gain from halving its bytes.

`device.inference_dtype` decides the dtype (`--dtype auto|bf16|fp16|fp32`); `to_inference_dtype` applies it.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.models.quantized import Int4Linear, Int8Linear

QUANTIZED = (Int8Linear, Int4Linear)


class PackedLinear(nn.Linear):
    """An nn.Linear whose bf16 weight is also held in oneDNN's blocked layout, for the CPU's bf16 kernels.

    Why: `F.linear` on a bf16 weight at batch 1 gains little over the fp32 product here (0.8-0.9x its time),
    while oneDNN's kernel on a weight pre-packed once (what inductor's freezing does for compiled graphs) takes
    0.4-0.6x (GPT-2's four matrix shapes at batch 1, one thread, AVX512-BF16/AMX Xeon). The packed copy is rebuilt
    when the weight changes (its version counter), and the plain product is used where the kernel does not apply:
    gradients, other devices, torch.compile tracing (inductor picks its own kernels). `weight` and `bias` stay the
    module's own parameters (the same objects: tied weights stay tied, state-dict keys do not change); the packed
    copy is no parameter nor buffer, so it never reaches a checkpoint. Memory: bf16 weights plus their packed copy,
    about what the fp32 model held.
    """

    @classmethod
    def wrap(cls, linear: nn.Linear) -> PackedLinear:
        packed = cls.__new__(cls)
        nn.Module.__init__(packed)
        packed.in_features, packed.out_features = linear.in_features, linear.out_features
        packed.weight, packed.bias = linear.weight, linear.bias
        packed._packed, packed._packed_key = None, None
        return packed

    def _plain(self, x: torch.Tensor) -> bool:
        return (
            x.device.type != "cpu"
            or x.dtype != torch.bfloat16
            or self.weight.dtype != torch.bfloat16
            or torch.compiler.is_compiling()
            or (torch.is_grad_enabled() and self.weight.requires_grad)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._plain(x):
            return F.linear(x, self.weight, self.bias)
        key = (self.weight._version, self.weight.data_ptr())
        if self._packed is None or self._packed_key != key:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), 1)
            self._packed_key = key
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, bias, "none", [], "")

    def _apply(self, fn, *args, **kwargs):
        self._packed = None  # another device or dtype: repack on the next call
        return super()._apply(fn, *args, **kwargs)


def can_pack_bf16() -> bool:
    """Whether this PyTorch build has oneDNN's bf16 linear kernels for this CPU."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pack_linears(model: nn.Module) -> int:
    """Swap every plain nn.Linear of `model` for a PackedLinear (the same parameters); returns how many."""
    count = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear.wrap(child))
                count += 1
    return count


def to_inference_dtype(model: nn.Module, dtype: torch.dtype, pack: bool | None = None) -> nn.Module:
    """Cast `model`'s floating-point parameters and buffers to `dtype` in place (quantized modules keep their
    int8/int4 tensors and fp32 scales, which their kernels read), and with bf16 on a CPU that has oneDNN's bf16
    kernels, pre-pack its Linear layers (PackedLinear; `pack`=False, or the environment variable
    LMFORGE_PACK_BF16=0, keeps plain ones). Each parameter stays the same object, so tied weights stay tied."""
    if pack is None:
        pack = os.environ.get("LMFORGE_PACK_BF16", "1") != "0"
    skip = {
        id(t) for m in model.modules() if isinstance(m, QUANTIZED) for t in (*m.parameters(), *m.buffers())
    }
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.is_floating_point() and p.dtype != dtype and id(p) not in skip:
                p.data = p.data.to(dtype)
        for name, b in module.named_buffers(recurse=False):
            if b is not None and b.is_floating_point() and b.dtype != dtype and id(b) not in skip:
                setattr(module, name, b.to(dtype))
    device = next(model.parameters(), torch.empty(0)).device
    if pack and dtype == torch.bfloat16 and device.type == "cpu" and can_pack_bf16():
        pack_linears(model)
    return model


def params_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (fp32 for a model without one)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
