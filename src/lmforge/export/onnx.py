"""ONNX export of GPT decoders (a prefill and a KV-cache decode graph) and fine-tuned classifiers.

    DIR/model.onnx     decoder: input_ids (batch, seq) -> logits (batch, seq, vocab), present
                       classifier: input_ids, attention_mask[, token_type_ids] -> logits (batch, labels)
    DIR/decode.onnx    decoder only: input_ids (batch, new), past -> logits (batch, new, vocab), present
    DIR/tokenizer.json the checkpoint's tokenizer (Hugging Face tokenizers format)
    DIR/config.json    what a runtime needs: inputs and outputs, the cache layout, block size, special tokens

The keys and values of all layers travel as one tensor, past/present of shape
(n_layer, 2, batch, kv_heads, length, head_dim), index 0 the keys and 1 the values: two graph inputs instead of
2 x n_layer, and a runtime appends a step's `present` by simply feeding it back as `past`.

Graphs come from torch.onnx.export's dynamo-based exporter (the default in torch 2.13) with symbolic batch and
sequence dimensions.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.checkpoint import load_checkpoint, resolve_checkpoint
from lmforge.errors import ConfigError
from lmforge.extras import require
from lmforge.generate.sampling import SamplingParams, generate_tokens
from lmforge.models.layers import apply_rope
from lmforge.outputs import check_output, staged

OPSET = 18


def decoder_step(gpt, input_ids: torch.Tensor, past: torch.Tensor | None = None):
    """The GPT forward pass written for export: (logits, present) with the cache as plain tensors."""
    hidden, present = decoder_hidden(gpt, input_ids, past)
    return gpt.lm_head(hidden), present


def decoder_hidden(gpt, input_ids: torch.Tensor, past: torch.Tensor | None = None):
    """GPT.encode for export: (final hidden states, present).

    Same arithmetic as GPT.encode with a KVCache, but the cache grows by concatenation instead of being written
    into a preallocated buffer, which an exported graph cannot hold between calls; and causality follows from
    whether there is a past, not from the sequence length, which is symbolic while exporting.
    """
    B, T = input_ids.shape
    pos = 0 if past is None else past.shape[4]
    positions = torch.arange(T, device=input_ids.device) + pos
    x = gpt.tok_emb(input_ids)
    rope = None
    if gpt.pos_emb is not None:
        x = x + gpt.pos_emb(positions)
    else:
        rope = (gpt.rope_cos[positions], gpt.rope_sin[positions])
    mask = None
    if past is not None:  # new tokens see the whole past and the new ones up to themselves
        keys = torch.arange(pos + T, device=input_ids.device)
        mask = keys[None, :] <= positions[:, None]
    presents = []
    for i, block in enumerate(gpt.blocks):
        attn = block.attn
        h = block.attn_norm(x)
        q_width, kv_width = (
            attn.n_head * attn.head_dim,
            attn.n_kv_head * attn.head_dim,
        )  # head_dim may be pruned
        q, k, v = attn.qkv_proj(h).split([q_width, kv_width, kv_width], dim=-1)
        q = q.view(B, T, attn.n_head, attn.head_dim).transpose(1, 2)
        k = k.view(B, T, attn.n_kv_head, attn.head_dim).transpose(1, 2)
        v = v.view(B, T, attn.n_kv_head, attn.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if past is not None:
            k, v = torch.cat([past[i, 0], k], dim=2), torch.cat([past[i, 1], v], dim=2)
        presents.append(torch.stack([k, v]))
        if attn.n_kv_head != attn.n_head:  # explicit GQA: the exporter has no enable_gqa
            k = k.repeat_interleave(attn.n_head // attn.n_kv_head, dim=1)
            v = v.repeat_interleave(attn.n_head // attn.n_kv_head, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=past is None)
        x = x + attn.o_proj(y.transpose(1, 2).reshape(B, T, q_width))
        x = x + block.mlp(block.mlp_norm(x))
    return gpt.norm(x), torch.stack(presents)


class Prefill(nn.Module):
    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def forward(self, input_ids):
        return decoder_step(self.gpt, input_ids)


class Decode(nn.Module):
    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def forward(self, input_ids, past):
        return decoder_step(self.gpt, input_ids, past)


class ClassifierGraph(nn.Module):
    def __init__(self, classifier, with_segments: bool):
        super().__init__()
        self.classifier, self.with_segments = classifier, with_segments

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        c = self.classifier
        if c.config.backbone == "gpt":  # GPT.encode's causal flag depends on the length: use the export path
            hidden = decoder_hidden(c.backbone, input_ids)[0]
            return c.head(c.drop(c.pooled(hidden, attention_mask)))
        return c(input_ids, attention_mask, token_type_ids if self.with_segments else None)


def _export(module: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_shapes) -> None:
    import logging
    import warnings

    # The exporter warns about every optional op library it lacks (torchvision); none of it is the user's concern.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
    registration.setLevel(level)
    program.save(str(path))


def _inputs(model, config: dict, batch: int, seq: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=g)
    if config["kind"] == "decoder":
        return {"input_ids": ids}
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, seq // 2 :] = 0  # one padded row, so the mask input matters
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in config["inputs"]:
        feeds["token_type_ids"] = torch.zeros(batch, seq, dtype=torch.long)
    return feeds


def export_onnx(ckpt: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the ONNX folder of a GPT or classifier checkpoint; returns the folder. It appears whole at the end
    (lmforge.outputs.staged) and replaces an existing non-empty one only with overwrite=True."""
    for module in ("onnx", "onnxscript"):  # torch.onnx.export's dynamo exporter imports both
        require(module, extra="onnx", feature="ONNX export")

    src = resolve_checkpoint(ckpt)
    out = check_output(out, overwrite=overwrite, inputs=[src], error=ConfigError)
    model, tokenizer, ckpt_config = load_checkpoint(src, "cpu")
    model.eval()
    arch = ckpt_config["arch"]
    if ckpt_config.get("quantization"):
        raise ConfigError(
            f"{ckpt} is quantized; export the float checkpoint it came from "
            f"({ckpt_config.get('quantized_from', 'the original')})"
        )
    batch, seq = (
        torch.export.Dim("batch", min=1, max=1024),
        torch.export.Dim("seq", min=1, max=model.config.block_size),
    )
    config = {
        "format": "onnx",
        "opset": OPSET,
        "arch": arch,
        "source": str(src),
        "block_size": model.config.block_size,
        "vocab_size": model.config.vocab_size,
        "eos_id": tokenizer.eos_id,
        "pad_id": tokenizer.pad_id,
        "tokenizer": "tokenizer.json",
    }
    if arch not in ("gpt", "classifier"):
        raise ConfigError(f"ONNX export covers gpt and classifier checkpoints; {ckpt} is {arch!r}")
    with staged(out) as tmp:
        if arch == "gpt":
            _export_decoder(model, tmp, config, batch, seq)
        else:
            _export_classifier(model, tmp, config, batch, seq)
        shutil.copyfile(src / "tokenizer.json", tmp / "tokenizer.json")
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out


def _export_decoder(gpt, out: Path, config: dict, batch, seq) -> None:
    cfg = gpt.config
    config.update(
        kind="decoder",
        model="model.onnx",
        decode_model="decode.onnx",
        inputs=["input_ids"],
        outputs=["logits", "present"],
        decode_inputs=["input_ids", "past"],
        past_layout="(n_layer, 2, batch, kv_heads, length, head_dim); 0 = keys, 1 = values",
        n_layer=cfg.n_layer,
        kv_heads=cfg.kv_heads,
        head_dim=cfg.head_size,
    )
    ids = torch.randint(0, cfg.vocab_size, (2, 5))
    _export(
        Prefill(gpt),
        (ids,),
        out / "model.onnx",
        ["input_ids"],
        ["logits", "present"],
        {"input_ids": {0: batch, 1: seq}},
    )
    with torch.no_grad():
        _, past = decoder_step(gpt, ids)
    length = torch.export.Dim("past", min=1, max=cfg.block_size - 1)
    new = torch.export.Dim("new", min=1, max=cfg.block_size - 1)
    _export(
        Decode(gpt),
        (ids[:, :3], past),
        out / "decode.onnx",
        ["input_ids", "past"],
        ["logits", "present"],
        {"input_ids": {0: batch, 1: new}, "past": {2: batch, 4: length}},
    )


def _export_classifier(model, out: Path, config: dict, batch, seq) -> None:
    backbone = model.config.backbone
    if backbone not in ("bert", "gpt"):
        raise ConfigError(
            f"ONNX export covers classifiers on bert or gpt backbones, not {backbone!r} "
            "(packed recurrent sequences do not export)"
        )
    with_segments = backbone == "bert"
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_segments else [])
    config.update(
        kind="classifier",
        model="model.onnx",
        inputs=names,
        outputs=["logits"],
        labels=list(model.config.labels),
        multi_label=model.config.multi_label,
    )
    feeds = _inputs(model, config, 2, 7)
    _export(
        ClassifierGraph(model, with_segments),
        tuple(feeds[n] for n in names),
        out / "model.onnx",
        names,
        ["logits"],
        {n: {0: batch, 1: seq} for n in names},
    )


# ---- checking against PyTorch ----------------------------------------------------------------------------


def _session(path: Path):
    ort = require("onnxruntime", extra="onnx", feature="checking an ONNX export")

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same cores PyTorch uses, for a fair timing
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _timed(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


@torch.no_grad()
def check_onnx(
    folder: str | os.PathLike, ckpt: str | os.PathLike, tolerance: float = 1e-4, repeats: int = 20
) -> dict:
    """Run the exported graphs with onnxruntime on random inputs and compare them with PyTorch eager.

    Returns max_abs_diff (largest over the graphs), ok (diff <= tolerance), and per-call milliseconds for both.
    For a decoder, also decodes greedily step by step through decode.onnx and compares the tokens with
    PyTorch's KV-cache greedy decoding.
    """
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    model = load_checkpoint(ckpt, "cpu")[0].eval()
    session = _session(folder / "model.onnx")
    block = model.config.block_size
    feeds = _inputs(model, config, 1, block)
    names = [i.name for i in session.get_inputs()]
    np_feeds = {n: feeds[n].numpy() for n in names}
    if config["kind"] == "decoder":

        def eager():
            return model(feeds["input_ids"])
    else:

        def eager():
            return model(*(feeds.get(n) for n in ("input_ids", "attention_mask", "token_type_ids")))

    diff = float(np.abs(session.run(["logits"], np_feeds)[0] - eager().numpy()).max())
    result = {
        "max_abs_diff": diff,
        "tolerance": tolerance,
        "onnxruntime_ms": _timed(lambda: session.run(["logits"], np_feeds), repeats),
        "torch_ms": _timed(eager, repeats),
        "timed_input": f"batch 1 x {block} tokens",
    }
    if config["kind"] == "decoder":
        steps = block // 2
        ort_tokens, step_diff = greedy_onnx(folder, feeds["input_ids"][:, : block // 2].numpy(), steps, model)
        torch_tokens = greedy_torch(model, feeds["input_ids"][:, : block // 2], steps)
        result.update(
            decode_max_abs_diff=step_diff, greedy_steps=steps, greedy_tokens_match=ort_tokens == torch_tokens
        )
        result["max_abs_diff"] = max(diff, step_diff)
    result["ok"] = result["max_abs_diff"] <= tolerance and result.get("greedy_tokens_match", True)
    return result


def greedy_onnx(folder: Path, prompt: np.ndarray, steps: int, model=None) -> tuple[list[int], float]:
    """Greedy tokens from model.onnx (prefill) then decode.onnx one token at a time; with `model`, also the
    largest difference between each step's logits and PyTorch's on the same tokens."""
    prefill, decode = _session(folder / "model.onnx"), _session(folder / "decode.onnx")
    logits, past = prefill.run(["logits", "present"], {"input_ids": prompt})
    tokens, seq, diff = [], prompt, 0.0
    for _ in range(steps):
        if model is not None:
            with torch.no_grad():
                diff = max(
                    diff, float(np.abs(model(torch.from_numpy(seq))[:, -1].numpy() - logits[:, -1]).max())
                )
        nxt = logits[:, -1].argmax(-1).reshape(-1, 1).astype(np.int64)
        tokens.append(int(nxt[0, 0]))
        seq = np.concatenate([seq, nxt], axis=1)
        logits, past = decode.run(["logits", "present"], {"input_ids": nxt, "past": past})
    return tokens, diff


def greedy_torch(model, prompt: torch.Tensor, steps: int) -> list[int]:
    return [int(t[0]) for t in generate_tokens(model, prompt, SamplingParams(steps, temperature=0), None)]
