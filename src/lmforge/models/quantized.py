"""The quantized module format: int8 and group-wise int4 Linear layers, and the swaps that put them into a float model.

compress/quantize.py quantizes trained models with these modules; `checkpoint.load_checkpoint` calls
`prepare_quantized` to give a freshly built model the empty quantized modules a quantized checkpoint's weights fill.
They live with the models because loading a checkpoint needs them.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from lmforge.errors import ConfigError

METHODS = ("dynamic-int8", "int8-weight", "int4-weight")
GROUP_SIZES = (32, 64, 128)
OUTPUT_LAYERS = ("lm_head", "head")


# ---- int8 ------------------------------------------------------------------------------------------------


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (values in [-127, 127], fp32 scale per row)."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


# fbgemm's prepacked weights, keyed by the int8 weight tensor they were made from (held weakly: a freed model frees
# them), with the (version, address) of the weight, scale and bias when packed, so changed buffers are packed again.
_PREPACKED: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _fbgemm_weight(weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    key = tuple((t._version, t.data_ptr()) for t in (weight_int8, scale, bias) if t is not None)
    entry = _PREPACKED.get(weight_int8)
    if entry is None or entry[0] != key:
        zeros = torch.zeros(weight_int8.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # torch 2.13 deprecates quantized tensors; the kernel still ships
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch._make_per_channel_quantized_tensor(weight_int8, scale.double(), zeros, 0)
        entry = (key, torch.ops.quantized.linear_prepack(qweight, bias))
        _PREPACKED[weight_int8] = entry
    return entry[1]


def _dynamic_int8_linear(
    x: torch.Tensor, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    y = torch.ops.quantized.linear_dynamic(
        x.float().reshape(-1, weight_int8.shape[1]), _fbgemm_weight(weight_int8, scale, bias), True
    )
    return y.view(*x.shape[:-1], weight_int8.shape[0]).to(x.dtype)


@torch.library.custom_op("lmforge::dynamic_int8_linear", mutates_args=())
def dynamic_int8_linear(
    x: torch.Tensor, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x @ W.T + bias with W = weight_int8 * scale per row, through fbgemm's dynamic int8 kernel (activations
    quantized per call) on a weight prepacked once. An opaque op, so torch.compile keeps a model with these layers
    in one graph (fbgemm's packed weight, a script object, broke the graph at every layer) and fuses the rest."""
    return _dynamic_int8_linear(x, weight_int8, scale, bias)


@dynamic_int8_linear.register_fake
def dynamic_int8_linear_shape(x, weight_int8, scale, bias):
    return x.new_empty((*x.shape[:-1], weight_int8.shape[0]))


class Int8Linear(nn.Module):
    """A Linear layer with int8 weights and a per-output-channel fp32 scale.

    Weight-only (dynamic=False): the weight is dequantized in forward, an fp32 matmul follows. This beat
    `torch._weight_int8pack_mm` on this 2-core CPU (145 us vs 410 us for a 512x512 layer at batch 1, and far
    worse at batch 64), so the simple path is also the fast one here.
    Dynamic (dynamic=True): fbgemm's int8 x int8 kernel, activations quantized per call with the reduced
    range that x86 needs (the full range saturates its 16-bit accumulators).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, dynamic: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.dynamic = in_features, out_features, dynamic
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, dynamic: bool = False) -> Int8Linear:
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, dynamic)
        m.weight_int8, m.scale = quantize_int8(linear.weight)
        if linear.bias is not None:
            m.bias = linear.bias.detach().float().clone()
        return m

    def dequantized(self, dtype=torch.float32) -> torch.Tensor:
        return self.weight_int8.to(dtype) * self.scale[:, None].to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dynamic:
            return F.linear(
                x, self.dequantized(x.dtype), None if self.bias is None else self.bias.to(x.dtype)
            )
        if x.device.type != "cpu":
            raise ConfigError("dynamic-int8 models run on the CPU only; load them with device='cpu'")
        if torch.compiler.is_compiling():
            return dynamic_int8_linear(x, self.weight_int8, self.scale, self.bias)
        return _dynamic_int8_linear(x, self.weight_int8, self.scale, self.bias)  # without the op's dispatch

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, {'dynamic' if self.dynamic else 'weight-only'}"
        )


# ---- int4 ------------------------------------------------------------------------------------------------


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Values 0..15 of shape (..., 2n) as uint8 (..., n): even positions in the low nibble, odd in the high."""
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of pack_int4: uint8 (..., n) to values 0..15 (uint8) of shape (..., 2n)."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).flatten(-2)


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric group-wise 4-bit: (packed uint8 (out, in/2), scale and offset (out, in/group)).

    Asymmetric (min..max onto 0..15) rather than symmetric: with only 16 levels, not wasting half of them on a
    sign the group's values may not use halves the error of skewed groups.
    """
    out_f, in_f = weight.shape
    w = weight.detach().float().view(out_f, in_f // group_size, group_size)
    lo, hi = w.amin(-1), w.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-12)
    q = torch.round((w - lo[..., None]) / scale[..., None]).clamp(0, 15)
    return pack_int4(q.view(out_f, in_f)), scale, lo


class Int4Linear(nn.Module):
    """A Linear layer with group-wise 4-bit weights, dequantized to the input's dtype in forward."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int):
        super().__init__()
        if in_features % group_size:
            raise ValueError(f"in_features {in_features} is not a multiple of the group size {group_size}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("weight_int4", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, groups))
        self.register_buffer("offset", torch.zeros(out_features, groups))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int) -> Int4Linear:
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size)
        m.weight_int4, m.scale, m.offset = quantize_int4(linear.weight, group_size)
        if linear.bias is not None:
            m.bias = linear.bias.detach().float().clone()
        return m

    def dequantized(self, dtype=torch.float32) -> torch.Tensor:
        q = unpack_int4(self.weight_int4).view(self.out_features, -1, self.group_size).to(dtype)
        w = q * self.scale[..., None].to(dtype) + self.offset[..., None].to(dtype)
        return w.view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, group_size={self.group_size}"


# ---- whole models ----------------------------------------------------------------------------------------


def check_method(method: str, group_size: int) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown quantization method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "int4-weight" and group_size not in GROUP_SIZES:
        raise ConfigError(f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))}, got {group_size}")


def quantizable_layers(model: nn.Module, method: str, group_size: int, include_output: bool) -> list[str]:
    """Names of the Linear layers the method replaces (int4 needs in_features divisible by the group size)."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if name.rsplit(".", 1)[-1] in OUTPUT_LAYERS and not include_output:
            continue
        if method == "int4-weight" and module.in_features % group_size:
            continue
        names.append(name)
    return names


def swap_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def quantized_linear(linear: nn.Linear, method: str, group_size: int) -> nn.Module:
    if method == "int4-weight":
        return Int4Linear.from_float(linear, group_size)
    return Int8Linear.from_float(linear, dynamic=method == "dynamic-int8")


def quantize_model(model: nn.Module, method: str, group_size: int = 32, include_output: bool = False) -> dict:
    """Replace the model's Linear layers by quantized ones, in place; returns the config.json `quantization` entry."""
    check_method(method, group_size)
    if getattr(model.config, "statistical", False):
        raise ConfigError(
            "n-gram models are count tables without Linear layers; quantization applies to neural models"
        )
    layers = quantizable_layers(model, method, group_size, include_output)
    if not layers:
        raise ConfigError(f"the model has no Linear layers that {method} can quantize")
    for name in layers:
        swap_module(model, name, quantized_linear(model.get_submodule(name), method, group_size))
    return {
        "method": method,
        "group_size": group_size if method == "int4-weight" else None,
        "include_output": include_output,
        "layers": layers,
    }


def prepare_quantized(model: nn.Module, spec: dict) -> nn.Module:
    """Give a freshly built float model the empty quantized modules that a quantized checkpoint's weights fill."""
    method, group_size = spec.get("method"), spec.get("group_size") or 32
    check_method(method, group_size)
    for name in spec.get("layers", []):
        linear = model.get_submodule(name)
        bias = linear.bias is not None
        if method == "int4-weight":
            new = Int4Linear(linear.in_features, linear.out_features, bias, group_size)
        else:
            new = Int8Linear(linear.in_features, linear.out_features, bias, dynamic=method == "dynamic-int8")
        swap_module(model, name, new)
    return model
