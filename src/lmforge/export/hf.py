"""Hugging Face `transformers` checkpoints in and out: BERT, RoBERTa and XLM-R encoders, GPT-2 and Llama-style
decoders, Marian, mBART, T5 and mT5 encoder-decoders.

`import_hf(HF_DIR, out)` reads a local `transformers` folder (config.json, safetensors or PyTorch weights,
tokenizer: tokenizer.json, or slow files converted) and writes an lmforge checkpoint; `export_hf(CKPT, out)` writes
a folder that `transformers.AutoModel*.from_pretrained` and `AutoTokenizer.from_pretrained` load, with
generation_config.json, a chat fine-tune's template and a Hub model card. The weight names are mapped by hand, one
small table per family, so that both directions are the same mapping read forwards and backwards.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from pathlib import Path

import torch

from lmforge.checkpoint import (
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    save_weights,
    tied_aliases,
)
from lmforge.errors import CheckpointError, ConfigError
from lmforge.extras import require
from lmforge.models.quantized import OUTPUT_LAYERS, swap_module
from lmforge.models.registry import build_model
from lmforge.models.seq2seq import decoder_start_id
from lmforge.outputs import check_output, staged
from lmforge.tokenizers import Tokenizer
from lmforge.tokenizers.tokenizer import settled

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


# Encoder-decoders (BART family: Marian, mBART): lmforge seq2seq name -> Hugging Face name under "model.".
_BART_ENC_LAYER = {
    "attn_norm.weight": "self_attn_layer_norm.weight",
    "attn_norm.bias": "self_attn_layer_norm.bias",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.q_proj.bias": "self_attn.q_proj.bias",
    "attn.o_proj.weight": "self_attn.out_proj.weight",
    "attn.o_proj.bias": "self_attn.out_proj.bias",
    "mlp_norm.weight": "final_layer_norm.weight",
    "mlp_norm.bias": "final_layer_norm.bias",
    "mlp.up_proj.weight": "fc1.weight",
    "mlp.up_proj.bias": "fc1.bias",
    "mlp.down_proj.weight": "fc2.weight",
    "mlp.down_proj.bias": "fc2.bias",
}
_BART_DEC_LAYER = {
    **{k: v for k, v in _BART_ENC_LAYER.items() if not k.startswith(("attn.", "attn_norm"))},
    "self_norm.weight": "self_attn_layer_norm.weight",
    "self_norm.bias": "self_attn_layer_norm.bias",
    "self_attn.o_proj.weight": "self_attn.out_proj.weight",
    "self_attn.o_proj.bias": "self_attn.out_proj.bias",
    "cross_norm.weight": "encoder_attn_layer_norm.weight",
    "cross_norm.bias": "encoder_attn_layer_norm.bias",
    "cross_attn.q_proj.weight": "encoder_attn.q_proj.weight",
    "cross_attn.q_proj.bias": "encoder_attn.q_proj.bias",
    "cross_attn.o_proj.weight": "encoder_attn.out_proj.weight",
    "cross_attn.o_proj.bias": "encoder_attn.out_proj.bias",
}
# ... and the fused projections: lmforge's kv_proj (cross and encoder attention) and qkv_proj (decoder self-attention)
_BART_FUSED = {
    "encoder": {"attn.kv_proj": ("self_attn.k_proj", "self_attn.v_proj")},
    "decoder": {
        "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "cross_attn.kv_proj": ("encoder_attn.k_proj", "encoder_attn.v_proj"),
    },
}
_BART = {
    "enc_emb_norm.weight": "encoder.layernorm_embedding.weight",
    "enc_emb_norm.bias": "encoder.layernorm_embedding.bias",
    "dec_emb_norm.weight": "decoder.layernorm_embedding.weight",
    "dec_emb_norm.bias": "decoder.layernorm_embedding.bias",
    "enc_norm.weight": "encoder.layer_norm.weight",
    "enc_norm.bias": "encoder.layer_norm.bias",
    "dec_norm.weight": "decoder.layer_norm.weight",
    "dec_norm.bias": "decoder.layer_norm.bias",
    "pos_emb.weight": "encoder.embed_positions.weight",
    "dec_pos_emb.weight": "decoder.embed_positions.weight",
}
# T5's feed_forward_proj -> lmforge seq2seq's activation
T5_ACTIVATIONS = {"relu": "relu", "gated-gelu": "gated_gelu"}
# transformers' activation names of the BART family -> lmforge seq2seq's
BART_ACTIVATIONS = {"swish": "silu", "silu": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh", "relu": "relu"}


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
    if (folder / "source.spm").is_file() and (folder / "vocab.json").is_file():
        return marian_tokenizer(folder)  # transformers has no fast Marian tokenizer to convert it
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


def marian_tokenizer(folder: Path) -> Tokenizer:
    """A Marian folder's tokenizer (source.spm segments, vocab.json numbers) as one `tokenizers` Unigram model: the
    source model's pieces and scores under the vocabulary's ids, its normalisation, </s> after every text. Pieces
    only the target side knows are kept (so any output decodes) with a score below every source piece."""
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer

    require("sentencepiece", extra="hf", feature=f"the Marian tokenizer of {folder} (source.spm)")
    require("google.protobuf", extra="hf", feature=f"the Marian tokenizer of {folder} (source.spm)")
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString((folder / "source.spm").read_bytes())
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    except Exception as exc:  # OSError, JSON errors, protobuf's DecodeError
        raise CheckpointError(
            f"{folder}: source.spm or vocab.json is unreadable ({type(exc).__name__})"
        ) from None
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))) or "<unk>" not in vocab:
        raise CheckpointError(f"{folder}/vocab.json does not number its tokens 0..n-1 with an <unk>")
    scores = {p.piece: p.score for p in proto.pieces if p.type == 1}  # 1: a normal piece
    floor = min(scores.values(), default=0.0) - 10.0
    pieces = [(piece, scores.get(piece, floor)) for piece, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    hf = HFTokenizer(models.Unigram(pieces, unk_id=vocab["<unk>"], byte_fallback=False))
    spec = proto.normalizer_spec
    steps = [normalizers.Precompiled(spec.precompiled_charsmap)] if spec.precompiled_charsmap else []
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    hf.normalizer = normalizers.Sequence(steps)
    scheme = "always" if spec.add_dummy_prefix else "never"
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)
    hf.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
    specials = [
        t for t in vocab if t in ("</s>", "<unk>", "<pad>") or (t.startswith(">>") and t.endswith("<<"))
    ]
    hf.add_special_tokens(specials)
    if "</s>" in vocab:
        hf.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A $B </s>", special_tokens=[("</s>", vocab["</s>"])]
        )
    return Tokenizer(settled(hf))  # its float scores as they will read back from tokenizer.json


def download_hf(hf_id: str, cache_dir: str | None = None) -> Path:
    """A local folder with the Hub repository `hf_id` (needs network access; fails fast without it)."""
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                hf_id,
                cache_dir=cache_dir,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.spm", "README.md"],
            )
        )
    except Exception as exc:
        raise CheckpointError(
            f"cannot download {hf_id!r} from the Hugging Face Hub ({type(exc).__name__}); check the network, or "
            "download it elsewhere and give its folder"
        ) from None


def card_metadata(folder: Path) -> dict:
    """license and base_model from the YAML header of a Hub folder's README.md (what export-hf's card repeats);
    {} without one."""
    import yaml

    card = folder / "README.md"
    try:
        text = card.read_text(encoding="utf-8") if card.is_file() else ""
        match = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", text, flags=re.S)
        meta = yaml.safe_load(match.group(1)) if match else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    if not isinstance(meta, dict):
        return {}
    return {k: meta[k] for k in ("license", "base_model") if isinstance(meta.get(k), str)}


# ---- import ----------------------------------------------------------------------------------------------------


def import_hf(
    hf_dir: str | os.PathLike | None,
    out: str | os.PathLike,
    hf_id: str | None = None,
    overwrite: bool = False,
    src_lang: str | None = None,
    tgt_lang: str | None = None,
) -> Path:
    """Convert a local `transformers` checkpoint folder (or a Hub id) into an lmforge checkpoint folder at `out`
    (an existing one is replaced only with overwrite=True, never one that holds `hf_dir`). `src_lang` / `tgt_lang`
    (mBART's language codes, e.g. en_XX, ro_RO; by default those its tokenizer_config.json names) make every source
    end with `</s> src_lang` and the decoder start from `tgt_lang`, as transformers' mBART reads and writes them."""
    check_output(out, overwrite=overwrite, inputs=[hf_dir], error=CheckpointError)
    if (src_lang or tgt_lang) and hf_id is None and hf_dir is not None:
        _check_languages_apply(Path(hf_dir))
    folder = download_hf(hf_id) if hf_id else Path(hf_dir)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{folder} has no config.json; give the folder that save_pretrained wrote")
    hf = json.loads(cfg_file.read_text(encoding="utf-8"))
    kind = hf.get("model_type")
    converters = {
        "bert": _bert_from_hf,
        "roberta": _bert_from_hf,
        "xlm-roberta": _bert_from_hf,
        "gpt2": _gpt2_from_hf,
        "llama": _llama_from_hf,
        "marian": _bart_family_from_hf,
        "mbart": _bart_family_from_hf,
        "t5": _t5_from_hf,
        "mt5": _t5_from_hf,
    }
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
    languages = {}
    if kind == "mbart":
        languages = mbart_languages(folder, tokenizer, model.config, src_lang, tgt_lang)
    elif src_lang or tgt_lang:
        _check_languages_apply(folder)
    config = {
        "arch": arch,
        "model": dataclasses.asdict(model.config),
        "source": {
            "hf_dir": str(folder.resolve()),
            "hf_id": hf_id,
            "model_type": kind,
            "name_or_path": hf.get("_name_or_path"),
            "initialised": initialised,
            **({"languages": languages} if languages else {}),
            **card_metadata(folder),
        },
    }
    return save_checkpoint(out, model, tokenizer, config, overwrite=overwrite, inputs=(hf_dir,))


def _layers(hf: dict, key: str = "num_hidden_layers") -> range:
    return range(int(hf[key]))


_ROBERTA_HEAD = {  # RobertaForMaskedLM / XLMRobertaForMaskedLM, outside their "roberta." prefix
    "mlm_dense.weight": "lm_head.dense.weight",
    "mlm_dense.bias": "lm_head.dense.bias",
    "mlm_norm.weight": "lm_head.layer_norm.weight",
    "mlm_norm.bias": "lm_head.layer_norm.bias",
    "lm_head.bias": "lm_head.bias",
    "lm_head.weight": "lm_head.decoder.weight",
}
# model_type -> (the encoder's prefix in the *ForMaskedLM / *ForPreTraining layout, the MLM head's names)
_ENCODERS = {
    "bert": ("bert.", _BERT_HEAD),
    "roberta": ("roberta.", _ROBERTA_HEAD),
    "xlm-roberta": ("roberta.", _ROBERTA_HEAD),
}


def _bert_from_hf(hf: dict, w: dict) -> tuple[str, dict, dict]:
    """BERT, RoBERTa and XLM-R (the same encoder; RoBERTa's positions start after the padding index)."""
    kind = hf["model_type"]
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"only {kind} checkpoints with absolute position embeddings can be imported")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ConfigError(
            f"{kind} with hidden_act {hf['hidden_act']!r} cannot be imported (lmforge's uses exact GELU)"
        )
    offset = 0
    if kind != "bert":  # RoBERTa's position ids: padding_idx + 1 onwards (create_position_ids_from_input_ids)
        offset = int(1 if hf.get("pad_token_id") is None else hf["pad_token_id"]) + 1
    head_prefix, head = _ENCODERS[kind]
    prefix = head_prefix if any(k.startswith(head_prefix) for k in w) else ""
    cfg = dict(
        vocab_size=hf["vocab_size"],
        block_size=hf["max_position_embeddings"] - offset,
        n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"],
        n_embd=hf["hidden_size"],
        mlp_hidden=hf["intermediate_size"],
        dropout=hf.get("hidden_dropout_prob", 0.1),
        type_vocab_size=hf.get("type_vocab_size", 2),
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        position_offset=offset,
    )
    if cfg["block_size"] < 1:
        raise ConfigError(
            f"{kind} with max_position_embeddings {hf['max_position_embeddings']} has no positions"
        )
    state = {ours: w[prefix + theirs] for ours, theirs in _BERT.items() if prefix + theirs in w}
    for ours, theirs in head.items():
        if theirs in w and not (ours == "lm_head.weight" and cfg["tie_embeddings"]):
            state[ours] = w[theirs]
    for bias in ("cls.predictions.decoder.bias", "lm_head.decoder.bias"):  # older files keep the bias here
        if "lm_head.bias" not in state and bias in w:
            state["lm_head.bias"] = w[bias]
    for i in _layers(hf):
        src = f"{prefix}encoder.layer.{i}."
        for ours, theirs in _BERT_LAYER.items():
            state[f"layers.{i}.{ours}"] = w[src + theirs]
        for part in ("weight", "bias"):
            state[f"layers.{i}.qkv_proj.{part}"] = torch.cat([w[f"{src}{n}.{part}"] for n in _BERT_QKV])
    return "bert", cfg, state


def hf_start_token(hf: dict) -> int | None:
    """An encoder-decoder's decoder_start_token_id when it is a token of its vocabulary, else None."""
    start = hf.get("decoder_start_token_id")
    return start if isinstance(start, int) and 0 <= start < hf["vocab_size"] else None


def hf_source_suffix(hf: dict) -> list[int]:
    """What transformers' tokenizers append to every source of these encoder-decoders: </s> (mBART then adds the
    source language's code, which the model config does not name: mbart_languages adds it)."""
    eos = hf.get("eos_token_id")
    return [eos] if isinstance(eos, int) and 0 <= eos < hf["vocab_size"] else []


def _check_languages_apply(folder: Path) -> None:
    """--src-lang / --tgt-lang are mBART's: a ConfigError for any other model type."""
    cfg_file = folder / "config.json"
    kind = json.loads(cfg_file.read_text(encoding="utf-8")).get("model_type") if cfg_file.is_file() else None
    if kind is not None and kind != "mbart":
        raise ConfigError(
            f"--src-lang / --tgt-lang are mBART's language codes; this is a {kind} checkpoint (Marian and T5 "
            "models name their languages in the text or the model itself)"
        )


def mbart_languages(
    folder: Path, tokenizer: Tokenizer, cfg, src_lang: str | None, tgt_lang: str | None
) -> dict:
    """Set an imported mBART's language codes on its config and return them ({"src_lang", "tgt_lang"}, those
    known): every source ends with `</s> src_lang` (model.source_suffix) and the decoder starts from `tgt_lang`
    (model.decoder_start_token_id), as transformers' MBartTokenizer writes sources and its fine-tuned models
    decode. Each code is the one given, else the one tokenizer_config.json names, else (the source) the code the
    tokenizer's own template appends after </s>; a code that is not a token of the tokenizer is a ConfigError."""
    named: dict = {}
    try:
        named = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    named = named if isinstance(named, dict) else {}
    eos = tokenizer.eos_id
    with_specials = tokenizer.hf.encode("a").ids
    plain = tokenizer.hf.encode("a", add_special_tokens=False).ids
    appended = with_specials[len(plain) :] if with_specials[: len(plain)] == plain else []
    template = tokenizer.id_to_token(appended[1]) if len(appended) == 2 and appended[0] == eos else None
    codes = {
        "src_lang": src_lang or named.get("src_lang") or template,
        "tgt_lang": tgt_lang or named.get("tgt_lang"),
    }
    ids = {}
    for key, code in codes.items():
        if code is None:
            continue
        ids[key] = tokenizer.token_to_id(code)
        if ids[key] is None:
            raise ConfigError(
                f"--{key.replace('_', '-')} {code!r} is not a token of this mBART tokenizer (its language codes "
                "look like en_XX, ro_RO)"
            )
    if "src_lang" in ids and eos is not None:
        cfg.source_suffix = [eos, ids["src_lang"]]
    if "tgt_lang" in ids:
        cfg.decoder_start_token_id = ids["tgt_lang"]
    cfg.validate()
    return {k: v for k, v in codes.items() if v is not None}


def _bart_family_from_hf(hf: dict, w: dict) -> tuple[str, dict, dict]:
    """Marian (post-LN, sinusoidal positions, no final norms) and mBART (pre-LN, learned positions offset by 2,
    LayerNorm after the embeddings, final norms) onto lmforge's seq2seq model."""
    kind = hf["model_type"]
    act = hf.get("activation_function", "gelu")
    if act not in BART_ACTIVATIONS:
        raise ConfigError(f"{kind} with activation_function {act!r} cannot be imported")
    if (
        hf["encoder_attention_heads"] != hf["decoder_attention_heads"]
        or hf["encoder_ffn_dim"] != hf["decoder_ffn_dim"]
    ):
        raise ConfigError(
            f"{kind} checkpoints whose encoder and decoder differ in heads or width cannot be imported"
        )
    marian = kind == "marian"
    shared = hf.get("share_encoder_decoder_embeddings", True) if marian else True
    if marian and hf.get("decoder_vocab_size") not in (None, hf["vocab_size"]):
        raise ConfigError("Marian checkpoints with a separate target vocabulary cannot be imported")
    w = {k[len("model.") :] if k.startswith("model.") else k: v for k, v in w.items()}
    cfg = dict(
        vocab_size=hf["vocab_size"],
        block_size=hf["max_position_embeddings"],
        n_layer=hf["encoder_layers"],
        n_decoder_layer=hf["decoder_layers"],
        n_head=hf["encoder_attention_heads"],
        n_embd=hf["d_model"],
        mlp_hidden=hf["encoder_ffn_dim"],
        dropout=hf.get("dropout", 0.1),
        bias=True,
        norm_eps=1e-5,
        norm_position="post" if marian else "pre",
        position="sinusoidal" if marian else "learned",
        sinusoid_layout="halves" if marian else "interleaved",
        position_offset=0 if marian else 2,
        separate_positions=not marian,
        embed_norm=not marian,
        share_embeddings=shared,
        activation=BART_ACTIVATIONS[act],
        scale_embedding=bool(hf.get("scale_embedding", False)),
        logits_bias=True,
        decoder_start_token_id=hf_start_token(hf),
        source_suffix=hf_source_suffix(hf),
    )
    enc_emb = w.get("shared.weight", w.get("encoder.embed_tokens.weight"))
    dec_emb = w.get("decoder.embed_tokens.weight", enc_emb)
    state = {"tok_emb.weight": enc_emb}
    if not shared:
        state["dec_tok_emb.weight"] = dec_emb
        state["lm_head.weight"] = w.get("lm_head.weight", dec_emb)  # tied to the decoder's embedding
    state["final_logits_bias"] = w.get("final_logits_bias", torch.zeros(1, hf["vocab_size"])).reshape(-1)
    state.update({ours: w[theirs] for ours, theirs in _BART.items() if theirs in w and not marian})
    for stack, n, table in (
        ("encoder", cfg["n_layer"], _BART_ENC_LAYER),
        ("decoder", cfg["n_decoder_layer"], _BART_DEC_LAYER),
    ):
        for i in range(n):
            src, dst = f"{stack}.layers.{i}.", f"{stack}.{i}."
            state.update({dst + ours: w[src + theirs] for ours, theirs in table.items()})
            for ours in _BART_FUSED[stack]:
                for part in ("weight", "bias"):
                    theirs = [w[f"{src}{name}.{part}"] for name in _BART_FUSED[stack][ours]]
                    state[f"{dst}{ours}.{part}"] = torch.cat(theirs)
    return "seq2seq", cfg, state


def _t5_from_hf(hf: dict, w: dict) -> tuple[str, dict, dict]:
    """T5 (ReLU, tied output scaled by d_model**-0.5) and T5 v1.1 / mT5 (gated GELU, untied output) onto lmforge's
    seq2seq model; T5's unscaled attention scores become scaled ones over queries times sqrt(d_kv)."""
    kind = hf["model_type"]
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in T5_ACTIVATIONS:
        raise ConfigError(f"{kind} with feed_forward_proj {proj!r} cannot be imported (relu or gated-gelu)")
    # Tied when the file has no output layer of its own (transformers ties only then); the decoder output is
    # rescaled for a tied T5 (transformers 5 records it as scale_decoder_outputs; mT5 never rescales).
    tied = "lm_head.weight" not in w or torch.equal(w["lm_head.weight"], w["shared.weight"])
    rescale = hf.get("scale_decoder_outputs")
    if rescale is None:
        rescale = kind == "t5" and hf.get("tie_word_embeddings", True) is not False
    n_head, d_kv, d = hf["num_heads"], hf["d_kv"], hf["d_model"]
    cfg = dict(
        vocab_size=hf["vocab_size"],
        block_size=hf.get("n_positions") or 512,  # relative positions: any length; the decoder cache's size
        n_layer=hf["num_layers"],
        n_decoder_layer=hf.get("num_decoder_layers") or hf["num_layers"],
        n_head=n_head,
        head_dim=d_kv if d_kv * n_head != d else None,
        n_embd=d,
        mlp_hidden=hf["d_ff"],
        dropout=hf.get("dropout_rate", 0.1),
        bias=False,
        norm="rmsnorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        norm_position="pre",
        position="none",
        share_embeddings=tied,
        activation=T5_ACTIVATIONS[proj],
        scale_embedding=False,
        relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        output_rescale=bool(rescale),
        decoder_start_token_id=hf_start_token(hf),
        source_suffix=hf_source_suffix(hf),
    )
    scale = math.sqrt(d_kv)
    state = {"tok_emb.weight": w["shared.weight"]}
    if not tied:
        state["dec_tok_emb.weight"] = w.get("decoder.embed_tokens.weight", w["shared.weight"])
        state["lm_head.weight"] = w["lm_head.weight"]
    for ours, theirs in (("enc", "encoder"), ("dec", "decoder")):
        state[f"{ours}_norm.weight"] = w[f"{theirs}.final_layer_norm.weight"]
        state[f"{ours}_rel_bias.weight"] = w[
            f"{theirs}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        ]
    ffn = {"up_proj": "wi_1" if proj == "gated-gelu" else "wi", "down_proj": "wo"}
    if proj == "gated-gelu":
        ffn["gate_proj"] = "wi_0"
    for i in range(cfg["n_layer"]):
        src, dst = f"encoder.block.{i}.layer.", f"encoder.{i}."
        att = src + "0.SelfAttention."
        state[dst + "attn_norm.weight"] = w[src + "0.layer_norm.weight"]
        state[dst + "attn.q_proj.weight"] = w[att + "q.weight"] * scale
        state[dst + "attn.kv_proj.weight"] = torch.cat([w[att + "k.weight"], w[att + "v.weight"]])
        state[dst + "attn.o_proj.weight"] = w[att + "o.weight"]
        state[dst + "mlp_norm.weight"] = w[src + "1.layer_norm.weight"]
        state.update({f"{dst}mlp.{o}.weight": w[f"{src}1.DenseReluDense.{t}.weight"] for o, t in ffn.items()})
    for i in range(cfg["n_decoder_layer"]):
        src, dst = f"decoder.block.{i}.layer.", f"decoder.{i}."
        att, cross = src + "0.SelfAttention.", src + "1.EncDecAttention."
        state[dst + "self_norm.weight"] = w[src + "0.layer_norm.weight"]
        state[dst + "self_attn.qkv_proj.weight"] = torch.cat(
            [w[att + "q.weight"] * scale, w[att + "k.weight"], w[att + "v.weight"]]
        )
        state[dst + "self_attn.o_proj.weight"] = w[att + "o.weight"]
        state[dst + "cross_norm.weight"] = w[src + "1.layer_norm.weight"]
        state[dst + "cross_attn.q_proj.weight"] = w[cross + "q.weight"] * scale
        state[dst + "cross_attn.kv_proj.weight"] = torch.cat([w[cross + "k.weight"], w[cross + "v.weight"]])
        state[dst + "cross_attn.o_proj.weight"] = w[cross + "o.weight"]
        state[dst + "mlp_norm.weight"] = w[src + "2.layer_norm.weight"]
        state.update({f"{dst}mlp.{o}.weight": w[f"{src}2.DenseReluDense.{t}.weight"] for o, t in ffn.items()})
    return "seq2seq", cfg, state


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

# What a transformers user does with each exported family (the model card's pipeline_tag).
PIPELINE_TAGS = {"gpt": "text-generation", "bert": "fill-mask", "seq2seq": "text2text-generation"}
# lmforge's default generation (LM.generate, transduce): greedy, at most this many new tokens.
DEFAULT_MAX_NEW_TOKENS = 100


def export_hf(ckpt: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a checkpoint as a `transformers` folder: GPT-2 style → GPT2LMHeadModel, Llama style →
    LlamaForCausalLM, BERT → BertForMaskedLM (RoBERTa-style → RobertaForMaskedLM / XLMRobertaForMaskedLM),
    Marian-, mBART- and T5-style seq2seq → MarianMTModel, MBartForConditionalGeneration, (M)T5ForConditional-
    Generation; with tokenizer.json, tokenizer_config.json (and a chat fine-tune's chat template),
    generation_config.json for generative models and a README.md model card with Hugging Face's
    metadata header. A quantized checkpoint is written dequantized (with a warning); a structure transformers cannot
    express is a ConfigError. An existing non-empty `out` is replaced only with overwrite=True, never one that
    holds `ckpt`."""
    path = resolve_checkpoint(ckpt)
    out = check_output(out, overwrite=overwrite, inputs=[path], flag="HF_DIR", error=CheckpointError)
    model, tokenizer, config = load_checkpoint(path)
    arch = config["arch"]
    if arch not in PIPELINE_TAGS:
        raise ConfigError(
            f"a {arch} model has no transformers counterpart; export-hf takes gpt, bert and seq2seq checkpoints"
        )
    cfg = model.config
    source = config.get("source") if isinstance(config.get("source"), dict) else {}
    if config.get("quantization"):
        cfg = dequantize(model, config["quantization"])
        warnings.warn(
            f"{path} is quantized ({config['quantization'].get('method')}); transformers gets its weights "
            "dequantized to float32 (the same function, the size of the float model)",
            stacklevel=2,
        )
    if arch == "gpt":
        hf_cfg, state = _gpt_to_hf(cfg, model.state_dict())
    elif arch == "seq2seq":
        hf_cfg, state = _seq2seq_to_hf(cfg, model.state_dict(), tokenizer, source)
    else:
        hf_cfg, state = _bert_to_hf(cfg, model.state_dict(), source, tokenizer.pad_id)
    specials = {role: tokenizer.id_to_token(i) for role, i in tokenizer.special_ids.items() if i is not None}
    hf_cfg.update(
        vocab_size=cfg.vocab_size,
        pad_token_id=tokenizer.pad_id,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        torch_dtype="float32",
        lmforge={"arch": arch, "version": config.get("lmforge_version")},  # no local path: the folder travels
    )
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.block_size,
        **{f"{role}_token": tok for role, tok in specials.items()},
    }
    if arch == "bert":
        tok_cfg.update(cls_token=specials.get("bos"), sep_token=specials.get("eos"))
    if isinstance(source.get("languages"), dict):  # an imported mBART's language codes (mbart_languages)
        tok_cfg.update(source["languages"])
    if isinstance(config.get("chat_template"), str):
        tok_cfg["chat_template"] = hf_chat_template(config["chat_template"], tokenizer, arch)
    generation = generation_config(config, cfg, tokenizer, arch)
    with staged(out) as tmp:
        save_weights({k: v.contiguous() for k, v in state.items()}, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2), encoding="utf-8")
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2), encoding="utf-8")
        if generation is not None:
            (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2), encoding="utf-8")
        (tmp / "tokenizer.json").write_text(hf_tokenizer_json(tokenizer, arch), encoding="utf-8")
        (tmp / "README.md").write_text(
            model_card(path, config, hf_cfg, tokenizer, out.name), encoding="utf-8"
        )
    return out


def seq2seq_start(cfg, tokenizer: Tokenizer) -> int:
    """The decoder's first token: the model's own (imported Marian, mBART, T5), else the tokenizer's <bos>/<eos>."""
    own = cfg.decoder_start_token_id
    return own if own is not None else decoder_start_id(tokenizer)


def dequantize(model: torch.nn.Module, spec: dict):
    """Put float Linear layers (the dequantized weights) back in place of a quantized model's int8/int4 ones, in
    place; returns the config to export (untied when the quantized output layer no longer shares the embedding)."""
    for name in spec.get("layers", []):
        q = model.get_submodule(name)
        linear = torch.nn.Linear(q.in_features, q.out_features, bias=q.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(q.dequantized(torch.float32))
            if q.bias is not None:
                linear.bias.copy_(q.bias.float())
        swap_module(model, name, linear)
    cfg = model.config
    tied_head = any(n.rsplit(".", 1)[-1] in OUTPUT_LAYERS for n in spec.get("layers", []))
    if tied_head and getattr(cfg, "tie_embeddings", False):
        cfg = dataclasses.replace(
            cfg, tie_embeddings=False
        )  # the int8 head is no longer the embedding matrix
    return cfg


def start_id(tokenizer: Tokenizer, arch: str) -> int | None:
    """The token lmforge puts before a prompt: end-of-sequence for decoders (documents follow one in training,
    LM.prompt_ids), beginning-of-sequence ([CLS]) for encoders."""
    return tokenizer.eos_id if arch == "gpt" else tokenizer.bos_id


def hf_tokenizer_json(tokenizer: Tokenizer, arch: str) -> str:
    """The tokenizer.json to export: a tokenizer without a post-processor gets the one that adds the special tokens
    lmforge adds, so that `AutoTokenizer(text)` gives the ids lmforge's models were trained on (a decoder's prompt
    after <eos>; an encoder's [CLS] text [SEP], and [CLS] a [SEP] b [SEP] for pairs)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import processors

    hf = HFTokenizer.from_str(tokenizer.to_str())
    if hf.post_processor is not None:
        return hf.to_str()
    start, end = start_id(tokenizer, arch), tokenizer.eos_id
    if arch == "gpt" and start is not None:
        s = tokenizer.id_to_token(start)
        hf.post_processor = processors.TemplateProcessing(
            single=f"{s} $A", pair=f"{s} $A $B:1", special_tokens=[(s, start)]
        )
    elif arch == "bert" and start is not None and end is not None:
        s, e = tokenizer.id_to_token(start), tokenizer.id_to_token(end)
        hf.post_processor = processors.TemplateProcessing(
            single=f"{s} $A {e}", pair=f"{s} $A {e} $B:1 {e}:1", special_tokens=[(s, start), (e, end)]
        )
    return hf.to_str()


def hf_chat_template(jinja: str, tokenizer: Tokenizer, arch: str) -> str:
    """A chat fine-tune's template for `apply_chat_template`, which tokenizes without special tokens: the token
    lmforge puts before every prompt is written into the template, as Llama's templates write their <s>."""
    start = start_id(tokenizer, arch)
    if start is None:
        return jinja
    return "{{ " + json.dumps(tokenizer.id_to_token(start)) + " }}" + jinja


def generation_config(config: dict, cfg, tokenizer: Tokenizer, arch: str) -> dict | None:
    """generation_config.json for a generative model (None for encoders): the checkpoint's own "generation"
    defaults (transformers' field names) over greedy decoding of at most DEFAULT_MAX_NEW_TOKENS tokens (fewer when
    the context is shorter) that stops at the tokenizer's end-of-sequence token."""
    if arch == "bert":
        return None
    base = {
        **({"decoder_start_token_id": seq2seq_start(cfg, tokenizer)} if arch == "seq2seq" else {}),
        "bos_token_id": start_id(tokenizer, arch),
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
        "do_sample": False,
        "num_beams": 1,
        # transformers' learned and sinusoidal position tables end at the block (lmforge's decoders slide past it)
        "max_new_tokens": min(DEFAULT_MAX_NEW_TOKENS, cfg.block_size - 1),
    }
    own = config.get("generation")
    if own is not None and not isinstance(own, dict):
        raise CheckpointError("the checkpoint's config.json 'generation' is not a mapping; it is corrupted")
    return {**base, **(own or {})}


# An absolute local path (POSIX or Windows) inside a card's text: exported cards name files, not this machine.
_LOCAL_PATH = re.compile(r"(?<![\w.:/])(?:/|[A-Za-z]:[\\/])(?:[^\s`'\"/\\]+[\\/])+([^\s`'\"/\\]+)")
_AUTO_CLASS = {
    "text-generation": "AutoModelForCausalLM",
    "fill-mask": "AutoModelForMaskedLM",
    "text2text-generation": "AutoModelForSeq2SeqLM",
    "translation": "AutoModelForSeq2SeqLM",
    "summarization": "AutoModelForSeq2SeqLM",
}
# What a fine-tuned or imported encoder-decoder does, for the card's pipeline_tag.
_SEQ2SEQ_TASKS = {"translate": "translation", "summarize": "summarization", "marian": "translation"}


def local_path(value) -> bool:
    return isinstance(value, str) and (os.path.isabs(value) or value.startswith((".", "~")))


def base_model(config: dict) -> str | None:
    """The Hub id this checkpoint descends from when known: the one it was imported from, or the one its
    fine-tuning started from (a checkpoint folder whose own config names it)."""
    source = config.get("source") if isinstance(config.get("source"), dict) else {}
    for name in (source.get("hf_id"), source.get("name_or_path")):
        if isinstance(name, str) and name and not local_path(name):
            return name
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    parent = data.get("model") or data.get("backbone")
    if isinstance(parent, str) and (Path(parent) / "config.json").is_file():
        try:
            return base_model(json.loads((Path(parent) / "config.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, RecursionError):
            return None
    return None


def model_card(path: Path, config: dict, hf_cfg: dict, tokenizer: Tokenizer, folder: str) -> str:
    """README.md for the Hub: Hugging Face's YAML metadata header (library_name, license when known, tags,
    pipeline_tag, base_model when known), how to load it, and the checkpoint's own card without local paths."""
    arch = config["arch"]
    source = config.get("source") if isinstance(config.get("source"), dict) else {}
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    pipeline = PIPELINE_TAGS[arch]
    if arch == "seq2seq":
        pipeline = _SEQ2SEQ_TASKS.get(data.get("task") or source.get("model_type"), pipeline)
    meta = {"library_name": "transformers"}
    if source.get("license"):
        meta["license"] = source["license"]
    meta["tags"] = ["lmforge", hf_cfg["model_type"], *(["chat"] if "chat_template" in config else [])]
    meta["pipeline_tag"] = pipeline
    if base_model(config):
        meta["base_model"] = base_model(config)
    header = (
        ["---"]
        + [
            f"{k}:" + "".join(f"\n- {json.dumps(t)}" for t in v)
            if isinstance(v, list)
            else f"{k}: {json.dumps(v)}"
            for k, v in meta.items()
        ]
        + ["---", ""]
    )
    name = path.parent.name if re.match(r"^ckpt-\d+$", path.name) else path.name
    body = [
        f"# {name}",
        "",
        f"A {hf_cfg['architectures'][0]} exported from an lmforge {arch} checkpoint "
        f"({tokenizer.kind} tokenizer, {tokenizer.vocab_size:,} tokens).",
        "",
        "```python",
        f"from transformers import AutoTokenizer, {_AUTO_CLASS[pipeline]}",
        "",
        f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(folder)})  # this folder, or its Hub id once uploaded",
        f"model = {_AUTO_CLASS[pipeline]}.from_pretrained({json.dumps(folder)})",
        "```",
    ]
    if config.get("quantization"):
        body += [
            "",
            f"The lmforge checkpoint was quantized ({config['quantization'].get('method')}); these are its "
            "weights dequantized to float32.",
        ]
    own = path / "README.md"
    if own.is_file():
        text = own.read_text(encoding="utf-8", errors="replace")
        text = re.sub(r"\A# .*\n+", "", text)  # the title: ours replaces it
        text = re.split(r"^## Use\b", text, flags=re.M)[0].rstrip()  # lmforge's own command line
        body += ["", _LOCAL_PATH.sub(r"\1", text)]
    return "\n".join(header + body) + "\n"


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


def _bert_to_hf(cfg, ours: dict, source: dict, pad_id: int | None) -> tuple[dict, dict]:
    """BertForMaskedLM, or RobertaForMaskedLM / XLMRobertaForMaskedLM for an encoder with RoBERTa's positions
    (the model_type it was imported as, else roberta)."""
    kind = "bert"
    if cfg.position_offset:
        kind = (
            source.get("model_type") if source.get("model_type") in ("roberta", "xlm-roberta") else "roberta"
        )
        if pad_id != cfg.position_offset - 1:
            raise ConfigError(
                f"RoBERTa counts positions from its padding id + 1, so this encoder (position_offset "
                f"{cfg.position_offset}) needs the padding token at id {cfg.position_offset - 1}, not {pad_id}"
            )
    prefix, head = _ENCODERS[kind]
    state = {prefix + theirs: ours[o] for o, theirs in _BERT.items() if o in ours}
    state.update({theirs: ours[o] for o, theirs in head.items() if o in ours})
    if cfg.tie_embeddings:
        state.pop(head["lm_head.weight"], None)
    for i in range(cfg.n_layer):
        dst = f"{prefix}encoder.layer.{i}."
        for o, theirs in _BERT_LAYER.items():
            state[dst + theirs] = ours[f"layers.{i}.{o}"]
        for part in ("weight", "bias"):
            for name, t in zip(_BERT_QKV, ours[f"layers.{i}.qkv_proj.{part}"].chunk(3)):
                state[f"{dst}{name}.{part}"] = t
    if kind != "bert":  # RoBERTa's masked-LM model has no pooler
        state = {k: v for k, v in state.items() if ".pooler." not in k}
    arch = {
        "bert": "BertForMaskedLM",
        "roberta": "RobertaForMaskedLM",
        "xlm-roberta": "XLMRobertaForMaskedLM",
    }
    return dict(
        model_type=kind,
        architectures=[arch[kind]],
        hidden_size=cfg.n_embd,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        intermediate_size=cfg.hidden,
        max_position_embeddings=cfg.block_size + cfg.position_offset,
        type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.norm_eps,
        hidden_act="gelu",
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        position_embedding_type="absolute",
        tie_word_embeddings=cfg.tie_embeddings,
    ), state


# transformers' names of lmforge seq2seq's feed-forward activations
_BART_ACTIVATION_NAMES = {"silu": "swish", "gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def _seq2seq_family(cfg) -> str | None:
    """marian, mbart, t5 or None: which Hugging Face layout an lmforge seq2seq model has."""
    t5 = ("pre", "none", "rmsnorm", False, False, False, False)
    if (
        cfg.norm_position,
        cfg.position,
        cfg.norm,
        cfg.bias,
        cfg.embed_norm,
        cfg.scale_embedding,
        cfg.logits_bias,
    ) == t5 and cfg.relative_buckets:
        return "t5"
    if (cfg.norm_position, cfg.position, cfg.sinusoid_layout, cfg.position_offset, cfg.embed_norm) == (
        "post",
        "sinusoidal",
        "halves",
        0,
        False,
    ):
        return "marian"
    if (cfg.norm_position, cfg.position, cfg.position_offset, cfg.separate_positions, cfg.embed_norm) == (
        "pre",
        "learned",
        2,
        True,
        True,
    ) and cfg.share_embeddings:
        return "mbart"
    return None


def _t5_to_hf(cfg, ours: dict, tokenizer: Tokenizer, source: dict) -> tuple[dict, dict]:
    """T5ForConditionalGeneration (MT5ForConditionalGeneration for an imported mT5): the reverse of _t5_from_hf."""
    if cfg.output_rescale != cfg.share_embeddings or cfg.activation not in ("relu", "gated_gelu"):
        raise ConfigError(
            "transformers' T5 rescales the decoder output exactly when the output layer is tied, with a ReLU or "
            "gated-GELU feed-forward; this model differs"
        )
    if not cfg.share_embeddings and not torch.equal(ours["tok_emb.weight"], ours["dec_tok_emb.weight"]):
        raise ConfigError(
            "T5 reads encoder and decoder tokens through one embedding; this model's two differ"
        )
    kind = "mt5" if source.get("model_type") == "mt5" and not cfg.share_embeddings else "t5"
    gated = cfg.activation == "gated_gelu"
    ffn = {
        "up_proj": "wi_1" if gated else "wi",
        "down_proj": "wo",
        **({"gate_proj": "wi_0"} if gated else {}),
    }
    hd = cfg.head_size
    scale, inner = math.sqrt(hd), cfg.n_head * hd
    state = {"shared.weight": ours["tok_emb.weight"]}
    if not cfg.share_embeddings:
        state["lm_head.weight"] = ours["lm_head.weight"]
    for o, theirs in (("enc", "encoder"), ("dec", "decoder")):
        state[f"{theirs}.final_layer_norm.weight"] = ours[f"{o}_norm.weight"]
        state[f"{theirs}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = ours[
            f"{o}_rel_bias.weight"
        ]
    for i in range(cfg.n_layer):
        src, dst = f"encoder.{i}.", f"encoder.block.{i}.layer."
        k, v = ours[src + "attn.kv_proj.weight"].split(inner)
        att = dst + "0.SelfAttention."
        state.update(
            {
                dst + "0.layer_norm.weight": ours[src + "attn_norm.weight"],
                att + "q.weight": ours[src + "attn.q_proj.weight"] / scale,
                att + "k.weight": k,
                att + "v.weight": v,
                att + "o.weight": ours[src + "attn.o_proj.weight"],
                dst + "1.layer_norm.weight": ours[src + "mlp_norm.weight"],
                **{f"{dst}1.DenseReluDense.{t}.weight": ours[f"{src}mlp.{o}.weight"] for o, t in ffn.items()},
            }
        )
    for i in range(cfg.decoder_layers):
        src, dst = f"decoder.{i}.", f"decoder.block.{i}.layer."
        q, k, v = ours[src + "self_attn.qkv_proj.weight"].split(inner)
        ck, cv = ours[src + "cross_attn.kv_proj.weight"].split(inner)
        att, cross = dst + "0.SelfAttention.", dst + "1.EncDecAttention."
        state.update(
            {
                dst + "0.layer_norm.weight": ours[src + "self_norm.weight"],
                att + "q.weight": q / scale,
                att + "k.weight": k,
                att + "v.weight": v,
                att + "o.weight": ours[src + "self_attn.o_proj.weight"],
                dst + "1.layer_norm.weight": ours[src + "cross_norm.weight"],
                cross + "q.weight": ours[src + "cross_attn.q_proj.weight"] / scale,
                cross + "k.weight": ck,
                cross + "v.weight": cv,
                cross + "o.weight": ours[src + "cross_attn.o_proj.weight"],
                dst + "2.layer_norm.weight": ours[src + "mlp_norm.weight"],
                **{f"{dst}2.DenseReluDense.{t}.weight": ours[f"{src}mlp.{o}.weight"] for o, t in ffn.items()},
            }
        )
    return dict(
        model_type=kind,
        architectures=["MT5ForConditionalGeneration" if kind == "mt5" else "T5ForConditionalGeneration"],
        d_model=cfg.n_embd,
        d_kv=hd,
        d_ff=cfg.hidden,
        num_layers=cfg.n_layer,
        num_decoder_layers=cfg.decoder_layers,
        num_heads=cfg.n_head,
        relative_attention_num_buckets=cfg.relative_buckets,
        relative_attention_max_distance=cfg.relative_max_distance,
        feed_forward_proj="gated-gelu" if gated else "relu",
        layer_norm_epsilon=cfg.norm_eps,
        dropout_rate=cfg.dropout,
        n_positions=cfg.block_size,
        is_encoder_decoder=True,
        decoder_start_token_id=seq2seq_start(cfg, tokenizer),
        tie_word_embeddings=cfg.share_embeddings,
    ), state


def _seq2seq_to_hf(cfg, ours: dict, tokenizer: Tokenizer, source: dict) -> tuple[dict, dict]:
    if _seq2seq_family(cfg) == "t5":
        return _t5_to_hf(cfg, ours, tokenizer, source)
    kind = _seq2seq_family(cfg)
    if kind is None or not cfg.bias or cfg.norm != "layernorm" or cfg.relative_buckets or cfg.head_dim:
        raise ConfigError(
            "this seq2seq model's layout has no transformers counterpart: export-hf writes Marian-style ones "
            "(post-LN, sinusoidal positions in halves), mBART-style ones (pre-LN, learned positions offset by "
            "2, embedding LayerNorm) and T5-style ones (RMSNorm, relative-position buckets), such as import-hf "
            "makes"
        )
    state = {"model.shared.weight": ours["tok_emb.weight"]}
    if not cfg.share_embeddings:  # Marian with a decoder embedding of its own
        state = {
            "model.encoder.embed_tokens.weight": ours["tok_emb.weight"],
            "model.decoder.embed_tokens.weight": ours["dec_tok_emb.weight"],
            "lm_head.weight": ours["lm_head.weight"],
        }
    bias = ours.get("final_logits_bias", torch.zeros(cfg.vocab_size))
    state["final_logits_bias"] = bias.reshape(1, -1)
    if kind == "mbart":
        state.update({"model." + theirs: ours[o] for o, theirs in _BART.items() if o in ours})
    for stack, n, table in (
        ("encoder", cfg.n_layer, _BART_ENC_LAYER),
        ("decoder", cfg.decoder_layers, _BART_DEC_LAYER),
    ):
        for i in range(n):
            src, dst = f"{stack}.{i}.", f"model.{stack}.layers.{i}."
            state.update({dst + theirs: ours[src + o] for o, theirs in table.items()})
            for o, names in _BART_FUSED[stack].items():
                for part in ("weight", "bias"):
                    for name, t in zip(names, ours[f"{src}{o}.{part}"].chunk(len(names))):
                        state[f"{dst}{name}.{part}"] = t
    return dict(
        model_type=kind,
        architectures=["MarianMTModel" if kind == "marian" else "MBartForConditionalGeneration"],
        d_model=cfg.n_embd,
        encoder_layers=cfg.n_layer,
        decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.n_head,
        decoder_attention_heads=cfg.n_head,
        encoder_ffn_dim=cfg.hidden,
        decoder_ffn_dim=cfg.hidden,
        max_position_embeddings=cfg.block_size,
        activation_function=_BART_ACTIVATION_NAMES[cfg.activation],
        scale_embedding=cfg.scale_embedding,
        dropout=cfg.dropout,
        attention_dropout=0.0,
        activation_dropout=0.0,
        is_encoder_decoder=True,
        decoder_start_token_id=seq2seq_start(cfg, tokenizer),
        forced_eos_token_id=None,
        tie_word_embeddings=cfg.share_embeddings,
        **({"share_encoder_decoder_embeddings": cfg.share_embeddings} if kind == "marian" else {}),
    ), state
