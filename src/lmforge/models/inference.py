"""A loaded model put into its inference precision: weights cast to bf16 or fp16, and on a CPU the Linear layers'
bf16 weights pre-packed for oneDNN's matrix kernels, which batch-1 decoding needs to gain from halving its bytes.

`device.inference_dtype` decides the dtype (`--dtype auto|bf16|fp16|fp32`); `to_inference_dtype` applies it.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from lmforge.models.quantized import Int4Linear, Int8Linear

QUANTIZED = (Int8Linear, Int4Linear)

# Under torch.compile, bf16 Linear layers call the packed oneDNN kernel (an opaque op) when the model's packed weights
# total at least this many bytes, and leave the product to inductor below it. Compiled batch-1 greedy decoding,
# tokens/s, packed op against inductor's own product (max_autotune), AMX Xeon, 2 threads, 2026-12-06, one run each
# (RESULTS.md "Compiled bf16 decoding"): 6x384 (21 MB of bf16 weights) 0.86x, 4x512 (33 MB) 1.00x, 12x384
# (48 MB) 1.09x, 8x512 (58 MB) 1.09x, 6x768 (85 MB) 1.07x, 12x768 (170 MB) 1.14x, GPT-2 124M (236 MB) 1.26x.
COMPILED_PACK_MIN_BYTES = 32 * 2**20


# The packed copies, keyed by the weight tensor they were made from (held weakly: a freed model frees them), with
# the weight's (version, address) when packed, so a changed or moved weight is packed again.
_PACKED: WeakIdKeyDictionary = WeakIdKeyDictionary()


def packed_weight(weight: torch.Tensor) -> torch.Tensor:
    """`weight` (bf16, N x K) in oneDNN's blocked layout for its linear kernels, packed once per weight version."""
    key = (weight._version, weight.data_ptr())
    entry = _PACKED.get(weight)
    if entry is None or entry[0] != key:
        entry = (key, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1))
        _PACKED[weight] = entry
    return entry[1]


@torch.library.custom_op("lmforge::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias through oneDNN's kernel on the packed copy of `weight` (bf16 on a CPU). An opaque op, so
    a compiled graph calls the packed kernel instead of lowering the product itself (see PackedLinear)."""
    b = None if bias is None else bias.detach()
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight(weight), b, "none", [], "")


@packed_linear.register_fake
def packed_linear_shape(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


class PackedLinear(nn.Linear):
    """An nn.Linear whose bf16 weight is also held in oneDNN's blocked layout, for the CPU's bf16 kernels.

    Why: `F.linear` on a bf16 weight at batch 1 gains little over the fp32 product here (0.8-0.9x its time),
    while oneDNN's kernel on a weight pre-packed once (what inductor's freezing does for compiled graphs) takes
    0.4-0.6x (GPT-2's four matrix shapes at batch 1, one thread, AVX512-BF16/AMX Xeon). The packed copy is rebuilt
    when the weight changes (its version counter or address), and the plain product is used where the kernel does
    not apply: gradients, other devices, other dtypes. `weight` and `bias` stay the module's own parameters (the
    same objects: tied weights stay tied, state-dict keys do not change); the packed copy is no parameter nor
    buffer, so it never reaches a checkpoint. Memory: bf16 weights plus their packed copy, about what the fp32
    model held.

    Under torch.compile (`compiled_packed`), the product goes into the graph as the opaque op `lmforge::packed_linear`
    when the model's packed weights are large, and as a plain product, which inductor lowers and fuses itself, when
    they are small: `pack_linears` sets it by COMPILED_PACK_MIN_BYTES.
    """

    compiled_packed = True

    @classmethod
    def wrap(cls, linear: nn.Linear) -> PackedLinear:
        packed = cls.__new__(cls)
        nn.Module.__init__(packed)
        packed.in_features, packed.out_features = linear.in_features, linear.out_features
        packed.weight, packed.bias = linear.weight, linear.bias
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type != "cpu"
            or x.dtype != torch.bfloat16
            or self.weight.dtype != torch.bfloat16
            or (torch.is_grad_enabled() and self.weight.requires_grad)
            or (torch.compiler.is_compiling() and not self.compiled_packed)
        ):
            return F.linear(x, self.weight, self.bias)
        if torch.compiler.is_compiling():
            return packed_linear(x, self.weight, self.bias)
        # Eager: the kernel directly, without the custom op's dispatch (49 products a token at GPT-2 size).
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(x, packed_weight(self.weight), bias, "none", [], "")


def can_pack_bf16() -> bool:
    """Whether this PyTorch build has oneDNN's bf16 linear kernels for this CPU."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pack_linears(model: nn.Module, compiled_packed: bool | None = None) -> int:
    """Swap every plain nn.Linear of `model` for a PackedLinear (the same parameters); returns how many.
    `compiled_packed` (default: whether their weights total COMPILED_PACK_MIN_BYTES) says whether a compiled graph
    calls the packed kernel too."""
    packed = []
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                packed.append(PackedLinear.wrap(child))
                setattr(parent, name, packed[-1])
    if compiled_packed is None:
        weights = {id(m.weight): m.weight for m in packed}.values()
        compiled_packed = sum(w.numel() * w.element_size() for w in weights) >= COMPILED_PACK_MIN_BYTES
    for module in packed:
        module.compiled_packed = compiled_packed
    return len(packed)


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
