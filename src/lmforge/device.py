"""Device and numeric-precision choices that work on a laptop CPU and on CUDA alike."""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings

import torch

from lmforge.config import switch
from lmforge.errors import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} was asked for but CUDA is not available here; use --train.device cpu"
        )
    return device


def use_compile(setting: str | bool, device: torch.device) -> bool:
    """Whether to torch.compile: "true"/"false" (or a bool) as given; "auto" only on CUDA, where compiling pays off
    quickly, while on a CPU it costs tens of seconds that short jobs never earn back."""
    value = switch("compile", setting)
    return value == "true" or (value == "auto" and device.type == "cuda")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 arithmetic instructions (AVX512-BF16 or AMX); without them bf16 is emulated
    and runs two orders of magnitude slower than fp32."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The dtype to autocast matmuls to, or None for plain fp32."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "fp16":
            return torch.float16
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if device.type == "cpu":
        if precision == "bf16" and not cpu_has_native_bf16():
            warnings.warn(
                "this CPU has no bf16 instructions (bf16 would run ~150x slower than fp32); training in fp32",
                stacklevel=2,
            )
            return None
        if precision == "fp16":
            warnings.warn("fp16 autocast is not useful on CPU; training in fp32", stacklevel=2)
            return None
        return torch.bfloat16 if precision == "bf16" else None
    return None  # mps and others: fp32


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
