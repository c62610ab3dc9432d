"""The one place that maps an architecture name to its config and model classes, and named presets to configs."""

from __future__ import annotations

import dataclasses
import importlib

from lmforge.errors import ConfigError

# arch -> (module, config class, model class)
ARCHITECTURES = {
    "gpt": ("lmforge.models.gpt", "GPTConfig", "GPT"),
    "ngram": ("lmforge.models.ngram_model", "NGramConfig", "NGram"),
    "rnn": ("lmforge.models.rnn", "RNNConfig", "RNNLM"),
    "lstm": ("lmforge.models.rnn", "LSTMConfig", "RNNLM"),
    "gru": ("lmforge.models.rnn", "GRUConfig", "RNNLM"),
    "bert": ("lmforge.models.bert", "BertConfig", "Bert"),
    "classifier": ("lmforge.models.classifier", "ClassifierConfig", "Classifier"),
    "tfidf": ("lmforge.models.tfidf", "TfidfConfig", "TfidfClassifier"),  # a fitted bag-of-words classifier
    "span_qa": ("lmforge.models.span_qa", "SpanQAConfig", "SpanQA"),
    "tagger": ("lmforge.models.tagger", "TaggerConfig", "Tagger"),
    "seq2seq": ("lmforge.models.seq2seq", "Seq2SeqConfig", "Seq2Seq"),
}

# GPT-2 style: learned positions, LayerNorm, GELU, biases.  Llama style: RoPE, RMSNorm, SwiGLU, GQA, no biases.
_LLAMA = dict(
    position="rope", norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=False, norm_eps=1e-6
)

PRESETS: dict[str, tuple[str, dict, str]] = {
    # name: (arch, model config, description)
    "test": (
        "gpt",
        dict(n_layer=2, n_head=2, n_embd=48, block_size=64, vocab_size=512),
        "~0.1M params, for tests",
    ),
    "tiny": (
        "gpt",
        dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65),
        "nanoGPT's CPU recipe",
    ),
    "small": (
        "gpt",
        dict(n_layer=4, n_head=4, n_embd=192, block_size=128, vocab_size=4096),
        "quickstart size",
    ),
    "mini": (
        "gpt",
        dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65),
        "nanoGPT shakespeare-char",
    ),
    "gpt2": (
        "gpt",
        dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
        "the GPT-2 124M shape",
    ),
    "llama-test": (
        "gpt",
        dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=64, vocab_size=512, **_LLAMA),
        "Llama-style, ~0.1M params, for tests",
    ),
    "llama-tiny": (
        "gpt",
        dict(n_layer=4, n_head=4, n_kv_head=2, n_embd=128, block_size=128, vocab_size=4096, **_LLAMA),
        "Llama-style, 4x128",
    ),
    # Zaremba et al. 2014 (word-level PTB); train them with configs/zaremba-small.yaml / zaremba-medium.yaml.
    "zaremba-small": (
        "lstm",
        dict(n_embd=200, n_hidden=200, n_layer=2, dropout=0.0, block_size=20),
        "LSTM 2x200",
    ),
    "zaremba-medium": (
        "lstm",
        dict(n_embd=650, n_hidden=650, n_layer=2, dropout=0.5, block_size=35),
        "LSTM 2x650",
    ),
    # BERT-style encoders (masked-LM pretraining); bert-base is the original BERT-Base shape.
    "bert-test": (
        "bert",
        dict(n_layer=2, n_head=2, n_embd=48, block_size=64, vocab_size=512),
        "~0.1M params, for tests",
    ),
    "bert-tiny": (
        "bert",
        dict(n_layer=2, n_head=2, n_embd=128, block_size=128, vocab_size=4096),
        "Google's BERT-Tiny",
    ),
    "bert-mini": (
        "bert",
        dict(n_layer=4, n_head=4, n_embd=256, block_size=128, vocab_size=8192),
        "Google's BERT-Mini",
    ),
    "bert-base": (
        "bert",
        dict(n_layer=12, n_head=12, n_embd=768, block_size=512, vocab_size=30522),
        "the BERT-Base shape (110M)",
    ),
    "llama-mini": (
        "gpt",
        dict(n_layer=6, n_head=6, n_kv_head=2, n_embd=384, block_size=256, vocab_size=8192, **_LLAMA),
        "Llama-style, 6x384",
    ),
    # Encoder-decoder Transformers (span-corruption pretraining, or paired text).
    "seq2seq-test": (
        "seq2seq",
        dict(n_layer=2, n_head=2, n_embd=40, block_size=64, vocab_size=512),
        "2+2 layers, ~0.1M params, for tests",
    ),
    "seq2seq-small": (
        "seq2seq",
        dict(n_layer=3, n_head=4, n_embd=256, block_size=128, vocab_size=8192),
        "3+3 layers x 256, a small Multi30k-sized model",
    ),
}


def _load(arch: str):
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    module, config_name, model_name = ARCHITECTURES[arch]
    mod = importlib.import_module(module)
    return getattr(mod, config_name), getattr(mod, model_name)


def model_config_class(arch: str):
    return _load(arch)[0]


def model_class(arch: str):
    return _load(arch)[1]


# Objectives of fine-tuned task models: (what it is, its --task, its pipeline name). They predict, not generate.
TASK_MODELS = {
    "classify": ("classification", "classify", "text-classification"),
    "tag": ("token-classification (NER)", "ner", "ner"),
    "span": ("question-answering", "qa", "question-answering"),
}


def get_preset(name: str) -> tuple[str, dict]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    arch, values, _ = PRESETS[name]
    return arch, dict(values)


def is_statistical(arch: str) -> bool:
    """Fitted by counting in one pass (n-gram) instead of by the gradient loop."""
    return getattr(model_config_class(arch), "statistical", False)


def build_model(arch: str, config):
    """Instantiate the model of `arch` from its config dataclass (or a dict of its fields)."""
    config_cls, model_cls = _load(arch)
    if isinstance(config, dict):
        known = {f.name for f in dataclasses.fields(config_cls)}
        unknown = set(config) - known
        if unknown:
            raise ConfigError(
                f"unknown model config key(s) {', '.join(sorted(unknown))} for architecture {arch!r}"
            )
        config = config_cls(**config)
    return model_cls(config)
