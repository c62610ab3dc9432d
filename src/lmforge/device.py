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


# `train.precision auto` on a CPU with bf16 units: bf16 autocast for transformers at least this wide. Measured with
# `benchmarks/train_throughput.py --contender lmforge --contender lmforge-bf16` on the AMX Xeon (2 cores, quiet; see
# RESULTS.md "bf16 autocast by default"), bf16 against fp32 training speed of a GPT: 4x128 0.79x (the casts around
# small products cost more than AMX gains), 4x192 1.14x, 4x256 1.45x, 6x384 2.24x.
CPU_BF16_MIN_WIDTH = 192


def matmul_width(model: torch.nn.Module) -> int:
    """The input width of the linear layers that hold most of the model's matrix weights (0 without any)."""
    mass: dict[int, int] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            mass[module.in_features] = mass.get(module.in_features, 0) + module.weight.numel()
    return max(mass, key=mass.__getitem__) if mass else 0


def cpu_bf16_pays(model: torch.nn.Module) -> bool:
    """Whether bf16 autocast trains `model` faster than fp32 on this CPU: bf16 units, a transformer at least
    CPU_BF16_MIN_WIDTH wide, and no recurrent layers (their bf16 kernels were not measured, so they stay fp32)."""
    if not cpu_has_native_bf16():
        return False
    if any(isinstance(m, torch.nn.RNNBase) for m in model.modules()):
        return False
    return matmul_width(model) >= CPU_BF16_MIN_WIDTH


def coarse_size(n: int, per_octave: int, multiple: int = 1) -> int:
    """n rounded up to a multiple of `multiple`, or of 1/per_octave of the power of two below n when that is
    larger (per_octave a power of two): at most `per_octave` sizes between two powers of two (16: 1000 -> 1024,
    600 -> 608). Why: oneDNN (bf16 on a CPU) builds and caches a kernel for every matrix shape it meets, so batches
    whose row count or width changes every step keep building kernels and fill memory with them (RESULTS.md,
    "Unpadded row counts" and "Padded lengths"); a few padding rows or columns keep the shapes to a short list."""
    step = max(multiple, 1 << max(0, n.bit_length() - per_octave.bit_length()))
    return -(-n // step) * step


def autocast_dtype(
    device: torch.device, precision: str = "auto", model: torch.nn.Module | None = None
) -> torch.dtype | None:
    """The dtype to autocast matmuls to, or None for plain fp32. `auto` on a CPU: bf16 when `model` is given and
    cpu_bf16_pays(model), fp32 otherwise."""
    if precision == "fp32":
        return None
    if device.type == "cpu" and precision == "auto":
        return torch.bfloat16 if model is not None and cpu_bf16_pays(model) else None
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


INFERENCE_DTYPES = ("auto", "bf16", "fp16", "fp32")

# `--dtype auto` on a CPU with bf16 units picks bf16 weights because they decode faster than fp32 at batch 1:
# measured on the AVX512-BF16/AMX Xeon (2026-12-06, commit ca16fb2 + this change, 1 thread, other jobs running),
# eager GPT-2 124M shape, 32 new tokens, 5 alternating rounds in separate processes: fp32 2.88 tokens/s, bf16
# weights pre-packed for oneDNN (models/inference.py) 3.97 (1.38x, faster in every round), bf16 unpacked 3.42;
# 6x384: 1.12x (benchmarks/RESULTS.md, "bf16 weights"). CPUs without bf16 units always get fp32.
CPU_AUTO_BF16 = True


def inference_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """The dtype of a model's weights (and KV cache) for inference, from `--dtype` auto|bf16|fp16|fp32.

    auto: bf16 on CUDA (fp16 where the GPU lacks bf16); on a CPU with bf16 units (AVX512-BF16 or AMX) bf16 when
    CPU_AUTO_BF16 (measured faster for decoding), else fp32; fp32 elsewhere. bf16 is refused (ConfigError) where it
    would be emulated: a CPU without bf16 units runs it ~150x slower than fp32, never worth a silent fallback.
    fp16 is CUDA's only (CPU kernels for it are slow)."""
    if name not in INFERENCE_DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; use one of {', '.join(INFERENCE_DTYPES)}")
    if name == "fp32":
        return torch.float32
    if device.type == "cuda":
        if name == "fp16" or not torch.cuda.is_bf16_supported():
            if name == "bf16":
                raise ConfigError("this GPU has no bf16 support; use --dtype fp16 or fp32")
            return torch.float16
        return torch.bfloat16
    if name == "fp16":
        raise ConfigError(f"--dtype fp16 runs on CUDA only; use bf16 or fp32 on {device.type}")
    native = device.type == "cpu" and cpu_has_native_bf16()
    if name == "bf16" and not native:
        raise ConfigError(
            "--dtype bf16 needs CUDA or a CPU with bf16 instructions (AVX512-BF16 or AMX); this "
            f"{device.type} would emulate it ~150x slower than fp32: use --dtype fp32 or auto"
        )
    return torch.bfloat16 if name == "bf16" or (native and CPU_AUTO_BF16) else torch.float32


# glibc malloc settings of keep_freed_memory(): blocks up to this size come from the heap (not a fresh mmap), and
# freed heap memory is kept for reuse up to this much instead of being returned to the operating system.
MALLOC_MMAP_MAX = 32 << 20  # glibc's largest allowed mmap threshold on 64-bit
MALLOC_KEEP = 1 << 30


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse (process-wide, from now on); True if applied.

    A CPU training step allocates and frees the same activation and gradient buffers every step. By default glibc
    maps blocks over its (adaptive) mmap threshold afresh and returns the freed top of the heap to the system, so
    the next step touches new pages: a GPT 4x128 step took 200-2,200 page faults and 6x384 ~11,600 (RESULTS.md
    "Training overhead at 4x128"). With reuse it takes next to none; the process's memory then stays at its peak
    instead of shrinking between steps. A no-op (False) off Linux/glibc."""
    import ctypes
    import platform

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters from glibc's malloc.h
    mapped = libc.mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_MAX)
    return bool(mapped) and bool(libc.mallopt(M_TRIM_THRESHOLD, MALLOC_KEEP))
