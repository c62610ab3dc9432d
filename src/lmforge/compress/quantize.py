"""Post-training quantization of a model's Linear layers, saved as an ordinary (loadable) checkpoint.

Methods:
  dynamic-int8  int8 weights (per output channel, symmetric) and activations quantized on the fly, through
                PyTorch's fbgemm dynamic linear kernel (what `torch.ao.quantization.quantize_dynamic` uses; that
                wrapper is deprecated in torch 2.13, so we call its kernel directly). CPU only.
  int8-weight   the same int8 weights, dequantized to fp32 in forward (weight-only: activations stay fp32).
  int4-weight   group-wise 4-bit weights: per group of `group_size` inputs a scale and an offset (the group's
                minimum), two 4-bit values packed in each uint8; dequantized in forward.

Embeddings and the output layer (`lm_head`, a classifier's `head`) stay fp32 unless include_output is set: the
output layer of a small model is a large share of its error, and a GPT's is often tied to the embedding.

The checkpoint's config.json gets a `quantization` entry (method, group_size, layers); `load_checkpoint` calls
`models.quantized.prepare_quantized` to swap empty quantized modules in before loading model.safetensors, which holds the packed
tensors themselves, so nothing is re-quantized at load time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from lmforge.checkpoint import load_checkpoint, read_config, resolve_checkpoint, save_checkpoint
from lmforge.errors import ConfigError
from lmforge.eval.perplexity import evaluate
from lmforge.generate.sampling import SamplingParams, generate_tokens
from lmforge.lm import load
from lmforge.models.quantized import METHODS, check_method, quantize_model
from lmforge.models.registry import is_statistical
from lmforge.outputs import check_output

__all__ = ["METHODS", "quantize_checkpoint", "quantize_model", "tokens_per_second", "describe", "report"]


def quantize_checkpoint(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    method: str,
    group_size: int = 32,
    include_output: bool = False,
    overwrite: bool = False,
) -> Path:
    """Quantize a checkpoint and save it as a new checkpoint folder that `lmforge.load` reads back. An existing
    `out` is replaced only with overwrite=True, and never one that holds `ckpt` (lmforge.outputs)."""
    check_method(method, group_size)
    src = resolve_checkpoint(ckpt)
    config = read_config(src)
    if config.get("arch") and is_statistical(config["arch"]):
        raise ConfigError(
            f"{ckpt} is an n-gram model (count tables, no Linear layers); quantize a neural checkpoint"
        )
    if config.get("quantization"):
        raise ConfigError(
            f"{ckpt} is already quantized ({config['quantization']['method']}); start from the float one"
        )
    check_output(out, overwrite=overwrite, inputs=[src])
    model, tokenizer, config = load_checkpoint(src, "cpu")
    spec = quantize_model(model.eval(), method, group_size, include_output)
    config = {k: v for k, v in config.items() if k not in ("lmforge_version", "tokenizer")}
    config["quantization"] = spec
    config["quantized_from"] = str(src)
    return save_checkpoint(out, model, tokenizer, config, overwrite=overwrite, inputs=(src,))


# ---- original vs quantized -------------------------------------------------------------------------------

REPORT_PROMPT = "The "
REPORT_TOKENS = 64


@torch.no_grad()
def tokens_per_second(lm, new_tokens: int = REPORT_TOKENS, prompt: str = REPORT_PROMPT) -> float:
    """Greedy decoding speed at batch 1 (KV cache on), after one warm-up run; ignores end-of-sequence."""
    ids = lm.tokenizer.encode(prompt) or [lm.tokenizer.eos_id or 0]
    x = torch.tensor([ids[: lm.model.config.block_size // 2]], device=lm.device)
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0)
    for _ in generate_tokens(lm.model, x, SamplingParams(max_new_tokens=4, temperature=0), None):
        pass
    start = time.perf_counter()
    n = sum(1 for _ in generate_tokens(lm.model, x, params, None))
    return n / (time.perf_counter() - start)


def describe(ckpt: str | os.PathLike, data: str | os.PathLike | None) -> dict:
    """size_bytes (model.safetensors), and for language models tokens_per_s and perplexity on `data`."""
    path = resolve_checkpoint(ckpt)
    lm = load(path, device="cpu")
    out = {
        "path": str(path),
        "size_bytes": (path / "model.safetensors").stat().st_size,
        "tokens_per_s": None,
        "perplexity": None,
    }
    if getattr(lm.model.config, "objective", None) == "classify":
        return out  # a classifier neither generates nor has a perplexity
    out["tokens_per_s"] = tokens_per_second(lm)
    if data is not None:
        out["perplexity"] = evaluate(lm, data)["perplexity"]
    return out


def report(original: str | os.PathLike, quantized: str | os.PathLike, data: str | os.PathLike | None) -> dict:
    """The original and the quantized checkpoint side by side, measured in the same run."""
    return {"original": describe(original, data), "quantized": describe(quantized, data)}
