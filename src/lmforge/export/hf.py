"""Hugging Face `transformers` checkpoints in and out: BERT-family encoders, GPT-2 and Llama-style decoders.

`import_hf(HF_DIR, out)` reads a local `transformers` folder (config.json, safetensors or PyTorch weights,
tokenizer) and writes an lmforge checkpoint; `export_hf(CKPT, out)` writes a folder that
`transformers.AutoModel*.from_pretrained` and `AutoTokenizer.from_pretrained` load. The weight names are mapped by
hand, one small table per family, so that both directions are the same mapping read forwards and backwards.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import torch

from lmforge.checkpoint import (
    load_checkpoint,
    read_config,
    resolve_checkpoint,
    save_checkpoint,
    save_weights,
    tied_aliases,
)
from lmforge.errors import CheckpointError, ConfigError
from lmforge.extras import require
from lmforge.models.registry import build_model
from lmforge.outputs import check_output, staged
from lmforge.tokenizers import Tokenizer

# ---- the weight maps: lmforge name -> Hugging Face name (per layer with {i}) --------------------------------

_GPT2 = {
    "tok_emb.weight": "transformer.wte.weight",
    "pos_emb.weight": "transformer.wpe.weight",
    "norm.weight": "transformer.ln_f.weight",
    "norm.bias": "transformer.ln_f.bias",
    "lm_head.weight": "lm_head.weight",
}
_GPT2_LAYER = {
    "attn_norm.weight": "ln_1.weight",
    "attn_norm.bias": "ln_1.bias",
    "attn.qkv_proj.weight": "attn.c_attn.weight",
    "attn.qkv_proj.bias": "attn.c_attn.bias",
    "attn.o_proj.weight": "attn.c_proj.weight",
    "attn.o_proj.bias": "attn.c_proj.bias",
    "mlp_norm.weight": "ln_2.weight",
    "mlp_norm.bias": "ln_2.bias",
    "mlp.up_proj.weight": "mlp.c_fc.weight",
    "mlp.up_proj.bias": "mlp.c_fc.bias",
    "mlp.down_proj.weight": "mlp.c_proj.weight",
    "mlp.down_proj.bias": "mlp.c_proj.bias",
}
_GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

_LLAMA = {
    "tok_emb.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_LLAMA_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "attn.o_proj.bias": "self_attn.o_proj.bias",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
    "mlp.gate_proj.bias": "mlp.gate_proj.bias",
    "mlp.up_proj.bias": "mlp.up_proj.bias",
    "mlp.down_proj.bias": "mlp.down_proj.bias",
}
_LLAMA_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")

_BERT = {
    "tok_emb.weight": "embeddings.word_embeddings.weight",
    "pos_emb.weight": "embeddings.position_embeddings.weight",
    "type_emb.weight": "embeddings.token_type_embeddings.weight",
    "emb_norm.weight": "embeddings.LayerNorm.weight",
    "emb_norm.bias": "embeddings.LayerNorm.bias",
    "pooler.weight": "pooler.dense.weight",
    "pooler.bias": "pooler.dense.bias",
}
_BERT_HEAD = {  # outside the "bert." prefix of BertForMaskedLM / BertForPreTraining
    "mlm_dense.weight": "cls.predictions.transform.dense.weight",
    "mlm_dense.bias": "cls.predictions.transform.dense.bias",
    "mlm_norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "mlm_norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "lm_head.bias": "cls.predictions.bias",
    "lm_head.weight": "cls.predictions.decoder.weight",
}
_BERT_LAYER = {
    "o_proj.weight": "attention.output.dense.weight",
    "o_proj.bias": "attention.output.dense.bias",
    "attn_norm.weight": "attention.output.LayerNorm.weight",
    "attn_norm.bias": "attention.output.LayerNorm.bias",
    "up_proj.weight": "intermediate.dense.weight",
    "up_proj.bias": "intermediate.dense.bias",
    "down_proj.weight": "output.dense.weight",
    "down_proj.bias": "output.dense.bias",
    "mlp_norm.weight": "output.LayerNorm.weight",
    "mlp_norm.bias": "output.LayerNorm.bias",
}
_BERT_QKV = ("attention.self.query", "attention.self.key", "attention.self.value")


# ---- reading a Hugging Face folder ------------------------------------------------------------------------------


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a `transformers` folder (safetensors, sharded or not, else PyTorch .bin), as float32."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(
            f"{folder} has no model.safetensors or pytorch_model.bin; it is not a transformers folder"
        )
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            part = load_file(str(f)) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu")
        except Exception as exc:
            raise CheckpointError(
                f"{f} is truncated or corrupted ({str(exc).splitlines()[0][:80]})"
            ) from None
        state.update(part)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _hf_tokenizer(folder: Path):
    """The folder's tokenizer as an lmforge Tokenizer (tokenizer.json, or the slow files converted by transformers)."""
    if (folder / "tokenizer.json").is_file():
        return Tokenizer.load(folder / "tokenizer.json")
    transformers = require(
        "transformers", extra="hf", feature=f"the tokenizer of {folder} (no tokenizer.json)"
    )
    try:
        fast = transformers.AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    except Exception as exc:
        raise CheckpointError(
            f"{folder} has no tokenizer.json and its tokenizer files cannot be read ({exc})"
        ) from None
    return Tokenizer.from_str(fast.backend_tokenizer.to_str())


def download_hf(hf_id: str, cache_dir: str | None = None) -> Path:
    """A local folder with the Hub repository `hf_id` (needs network access; fails fast without it)."""
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                hf_id, cache_dir=cache_dir, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]
            )
        )
    except Exception as exc:
        raise CheckpointError(
            f"cannot download {hf_id!r} from the Hugging Face Hub ({type(exc).__name__}); check the network, or "
            "download it elsewhere and give its folder"
        ) from None


# ---- import ----------------------------------------------------------------------------------------------------


def import_hf(
    hf_dir: str | os.PathLike | None,
    out: str | os.PathLike,
    hf_id: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a local `transformers` checkpoint folder (or a Hub id) into an lmforge checkpoint folder at `out`
    (an existing one is replaced only with overwrite=True, never one that holds `hf_dir`)."""
    check_output(out, overwrite=overwrite, inputs=[hf_dir], error=CheckpointError)
    folder = download_hf(hf_id) if hf_id else Path(hf_dir)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{folder} has no config.json; give the folder that save_pretrained wrote")
    hf = json.loads(cfg_file.read_text(encoding="utf-8"))
    kind = hf.get("model_type")
    converters = {"bert": _bert_from_hf, "gpt2": _gpt2_from_hf, "llama": _llama_from_hf}
    if kind not in converters:
        raise ConfigError(
            f"cannot import model_type {kind!r}; lmforge reads {', '.join(converters)} checkpoints"
        )
    arch, model_cfg, state = converters[kind](hf, read_hf_weights(folder))
    model = build_model(arch, model_cfg)
    fresh = model.state_dict()
    tied = tied_aliases(model)
    initialised = sorted(k for k in fresh if k not in state and k not in tied)
    unknown = sorted(k for k in state if k not in fresh)
    if unknown:
        raise CheckpointError(f"{folder} has weights lmforge cannot place: {', '.join(unknown[:3])}")
    for k, v in state.items():
        if fresh[k].shape != v.shape:
            raise CheckpointError(
                f"{folder}: {k} has shape {tuple(v.shape)}, expected {tuple(fresh[k].shape)}"
            )
    model.load_state_dict(state, strict=False)
    if initialised:
        warnings.warn(
            f"{len(initialised)} weight(s) were not in {folder} and start from a fresh initialisation "
            f"({', '.join(initialised[:4])}{'...' if len(initialised) > 4 else ''}); fine-tune before using them",
            stacklevel=2,
        )
    tokenizer = _hf_tokenizer(folder)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size}"
        )
    config = {
        "arch": arch,
        "model": dataclasses.asdict(model.config),
        "source": {
            "hf_dir": str(folder.resolve()),
            "hf_id": hf_id,
            "model_type": kind,
            "name_or_path": hf.get("_name_or_path"),
            "initialised": initialised,
        },
    }
    return save_checkpoint(out, model, tokenizer, config, overwrite=overwrite, inputs=(hf_dir,))


def _layers(hf: dict, key: str = "num_hidden_layers") -> range:
    return range(int(hf[key]))


def _bert_from_hf(hf: dict, w: dict) -> tuple[str, dict, dict]:
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError("only BERT checkpoints with absolute position embeddings can be imported")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ConfigError(
            f"BERT with hidden_act {hf['hidden_act']!r} cannot be imported (lmforge's uses exact GELU)"
        )
    prefix = "bert." if any(k.startswith("bert.") for k in w) else ""
    cfg = dict(
        vocab_size=hf["vocab_size"],
        block_size=hf["max_position_embeddings"],
        n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"],
        n_embd=hf["hidden_size"],
        mlp_hidden=hf["intermediate_size"],
        dropout=hf.get("hidden_dropout_prob", 0.1),
        type_vocab_size=hf.get("type_vocab_size", 2),
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )
    state = {ours: w[prefix + theirs] for ours, theirs in _BERT.items() if prefix + theirs in w}
    for ours, theirs in _BERT_HEAD.items():
        if theirs in w and not (ours == "lm_head.weight" and cfg["tie_embeddings"]):
            state[ours] = w[theirs]
    if "lm_head.bias" not in state and "cls.predictions.decoder.bias" in w:
        state["lm_head.bias"] = w["cls.predictions.decoder.bias"]
    for i in _layers(hf):
        src = f"{prefix}encoder.layer.{i}."
        for ours, theirs in _BERT_LAYER.items():
            state[f"layers.{i}.{ours}"] = w[src + theirs]
        for part in ("weight", "bias"):
            state[f"layers.{i}.qkv_proj.{part}"] = torch.cat([w[f"{src}{n}.{part}"] for n in _BERT_QKV])
    return "bert", cfg, state


# transformers' GPT-2 activation names -> ours (gelu_new and gelu_pytorch_tanh are the same function).
GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def _gpt2_from_hf(hf: dict, w: dict) -> tuple[str, dict, dict]:
    act = hf.get("activation_function", "gelu_new")
    if act not in GPT2_ACTIVATIONS:
        raise ConfigError(
            f"GPT-2 with activation_function {act!r} cannot be imported (lmforge has the exact GELU "
            "and its tanh approximation)"
        )
    prefix = "" if any(k.startswith("transformer.") for k in w) else "transformer."  # GPT2Model has no prefix
    w = {k if k.startswith(("transformer.", "lm_head")) else prefix + k: v for k, v in w.items()}
    tie = hf.get("tie_word_embeddings", True)
    cfg = dict(
        vocab_size=hf["vocab_size"],
        block_size=hf["n_positions"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=hf["n_embd"],
        mlp_hidden=hf.get("n_inner"),
        dropout=hf.get("resid_pdrop", 0.0),
        bias=True,
        norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        activation=GPT2_ACTIVATIONS[act],
        position="learned",
        tie_embeddings=tie,
    )
    state = {
        ours: w[theirs]
        for ours, theirs in _GPT2.items()
        if theirs in w and not (tie and ours == "lm_head.weight")
    }
    for i in _layers(hf, "n_layer"):
        for ours, theirs in _GPT2_LAYER.items():
            t = w[f"transformer.h.{i}.{theirs}"]
            state[f"blocks.{i}.{ours}"] = t.t().contiguous() if theirs in _GPT2_CONV1D else t
    return "gpt", cfg, state


def _llama_from_hf(hf: dict, w: dict) -> tuple[str, dict, dict]:
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(
            f"Llama with hidden_act {hf['hidden_act']!r} cannot be imported (lmforge's uses SwiGLU)"
        )
    if hf.get("rope_scaling") or (hf.get("rope_parameters") or {}).get("rope_type", "default") != "default":
        raise ConfigError("Llama checkpoints with RoPE scaling cannot be imported yet")
    tie = hf.get("tie_word_embeddings", False)
    theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    n_head = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // n_head
    cfg = dict(
        vocab_size=hf["vocab_size"],
        block_size=hf["max_position_embeddings"],
        n_layer=hf["num_hidden_layers"],
        n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head,
        n_embd=hf["hidden_size"],
        mlp_hidden=hf["intermediate_size"],
        dropout=0.0,
        bias=bool(hf.get("attention_bias", False)),
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        activation="swiglu",
        position="rope",
        rope_theta=float(theta),
        tie_embeddings=tie,
        head_dim=head_dim
        if head_dim * n_head != hf["hidden_size"]
        else None,  # e.g. Gemma-like or pruned heads
    )
    if bool(hf.get("mlp_bias", False)) != cfg["bias"]:
        raise ConfigError("Llama checkpoints with attention_bias != mlp_bias cannot be imported")
    state = {
        ours: w[theirs]
        for ours, theirs in _LLAMA.items()
        if theirs in w and not (tie and ours == "lm_head.weight")
    }
    for i in _layers(hf):
        src = f"model.layers.{i}."
        for ours, theirs in _LLAMA_LAYER.items():
            if src + theirs in w:
                state[f"blocks.{i}.{ours}"] = w[src + theirs]
        for part in ("weight", "bias"):
            if f"{src}{_LLAMA_QKV[0]}.{part}" in w:
                state[f"blocks.{i}.attn.qkv_proj.{part}"] = torch.cat(
                    [w[f"{src}{n}.{part}"] for n in _LLAMA_QKV]
                )
    return "gpt", cfg, state


# ---- export ----------------------------------------------------------------------------------------------------


def export_hf(ckpt: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a checkpoint as a `transformers` folder: GPT-2 style → GPT2LMHeadModel, Llama style →
    LlamaForCausalLM, BERT → BertForMaskedLM; with tokenizer.json and a tokenizer_config.json. An existing
    non-empty `out` is replaced only with overwrite=True, never one that holds `ckpt`."""
    path = resolve_checkpoint(ckpt)
    out = check_output(out, overwrite=overwrite, inputs=[path], flag="HF_DIR", error=CheckpointError)
    model, tokenizer, config = load_checkpoint(path)
    arch = read_config(path)["arch"]
    cfg = model.config
    if arch == "gpt":
        hf_cfg, state = _gpt_to_hf(cfg, model.state_dict())
    elif arch == "bert":
        hf_cfg, state = _bert_to_hf(cfg, model.state_dict())
    else:
        raise ConfigError(
            f"a {arch} model has no transformers counterpart; export-hf takes gpt and bert checkpoints"
        )
    specials = {role: tokenizer.id_to_token(i) for role, i in tokenizer.special_ids.items() if i is not None}
    hf_cfg.update(
        vocab_size=cfg.vocab_size,
        pad_token_id=tokenizer.pad_id,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        torch_dtype="float32",
        lmforge={"checkpoint": str(path), "arch": arch},
    )
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.block_size,
        **{f"{role}_token": tok for role, tok in specials.items()},
    }
    if arch == "bert":
        tok_cfg.update(cls_token=specials.get("bos"), sep_token=specials.get("eos"))
    with staged(out) as tmp:
        save_weights({k: v.contiguous() for k, v in state.items()}, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2), encoding="utf-8")
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2), encoding="utf-8")
        tokenizer.save(tmp / "tokenizer.json")
    return out


def _gpt_to_hf(cfg, ours: dict) -> tuple[dict, dict]:
    common = dict(tie_word_embeddings=cfg.tie_embeddings)
    if cfg.position == "learned" and cfg.norm == "layernorm" and cfg.activation in ("gelu", "gelu_tanh"):
        if cfg.head_size * cfg.n_head != cfg.n_embd:
            raise ConfigError(
                "GPT-2 needs heads of n_embd / n_head; this model's heads were pruned, so it has no "
                "GPT2LMHeadModel counterpart (a Llama-style model exports with its head_dim)"
            )
        state = {theirs: ours[o] for o, theirs in _GPT2.items() if o in ours}
        for i in range(cfg.n_layer):
            for o, theirs in _GPT2_LAYER.items():
                key = f"blocks.{i}.{o}"
                # GPT-2 always has biases: a bias-free lmforge model exports them as zeros (the same function).
                t = ours[key] if key in ours else torch.zeros(ours[key.replace(".bias", ".weight")].shape[0])
                state[f"transformer.h.{i}.{theirs}"] = t.t() if theirs in _GPT2_CONV1D else t
        state.setdefault("transformer.ln_f.bias", torch.zeros(cfg.n_embd))
        if cfg.tie_embeddings:
            state.pop("lm_head.weight", None)
        return dict(
            model_type="gpt2",
            architectures=["GPT2LMHeadModel"],
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_positions=cfg.block_size,
            n_inner=cfg.mlp_hidden,
            activation_function="gelu_new" if cfg.activation == "gelu_tanh" else "gelu",
            layer_norm_epsilon=cfg.norm_eps,
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
            **common,
        ), state
    if cfg.position == "rope" and cfg.norm == "rmsnorm" and cfg.activation == "swiglu":
        state = {theirs: ours[o] for o, theirs in _LLAMA.items() if o in ours}
        head_dim = cfg.head_size
        sizes = [cfg.n_head * head_dim, cfg.kv_heads * head_dim, cfg.kv_heads * head_dim]
        for i in range(cfg.n_layer):
            for o, theirs in _LLAMA_LAYER.items():
                if f"blocks.{i}.{o}" in ours:
                    state[f"model.layers.{i}.{theirs}"] = ours[f"blocks.{i}.{o}"]
            for part in ("weight", "bias"):
                if f"blocks.{i}.attn.qkv_proj.{part}" in ours:
                    for name, t in zip(_LLAMA_QKV, ours[f"blocks.{i}.attn.qkv_proj.{part}"].split(sizes)):
                        state[f"model.layers.{i}.{name}.{part}"] = t
        if cfg.tie_embeddings:
            state.pop("lm_head.weight", None)
        return dict(
            model_type="llama",
            architectures=["LlamaForCausalLM"],
            hidden_size=cfg.n_embd,
            num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head,
            num_key_value_heads=cfg.kv_heads,
            intermediate_size=cfg.hidden,
            max_position_embeddings=cfg.block_size,
            rms_norm_eps=cfg.norm_eps,
            rope_theta=cfg.rope_theta,
            hidden_act="silu",
            attention_bias=cfg.bias,
            mlp_bias=cfg.bias,
            head_dim=head_dim,
            **common,
        ), state
    raise ConfigError(
        "only GPT-2 style (learned positions, LayerNorm, GELU) and Llama style (RoPE, RMSNorm, SwiGLU) models "
        "have a transformers counterpart; this one mixes them"
    )


def _bert_to_hf(cfg, ours: dict) -> tuple[dict, dict]:
    state = {"bert." + theirs: ours[o] for o, theirs in _BERT.items()}
    state.update({theirs: ours[o] for o, theirs in _BERT_HEAD.items() if o in ours})
    if cfg.tie_embeddings:
        state.pop("cls.predictions.decoder.weight", None)
    for i in range(cfg.n_layer):
        dst = f"bert.encoder.layer.{i}."
        for o, theirs in _BERT_LAYER.items():
            state[dst + theirs] = ours[f"layers.{i}.{o}"]
        for part in ("weight", "bias"):
            for name, t in zip(_BERT_QKV, ours[f"layers.{i}.qkv_proj.{part}"].chunk(3)):
                state[f"{dst}{name}.{part}"] = t
    return dict(
        model_type="bert",
        architectures=["BertForMaskedLM"],
        hidden_size=cfg.n_embd,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        intermediate_size=cfg.hidden,
        max_position_embeddings=cfg.block_size,
        type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.norm_eps,
        hidden_act="gelu",
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        position_embedding_type="absolute",
        tie_word_embeddings=cfg.tie_embeddings,
    ), state
