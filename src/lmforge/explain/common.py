"""What the attention maps and the attributions share: loading a model, framing a text as it reads it, words."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from lmforge.errors import ConfigError
from lmforge.lm import LM, load
from lmforge.tasks.classify.encoding import TextEncoder
from lmforge.tasks.ner.encoding import WordEncoder
from lmforge.tasks.ner.pipeline import split_words


def as_lm(model: str | os.PathLike | LM, device: str = "cpu") -> LM:
    """An LM for a checkpoint path; an LM (or a task pipeline's loaded model: anything with model, tokenizer,
    config, path and device) as it is. Explanations run on the CPU by default (they are small)."""
    lm = load(model, device=device, compile=False) if isinstance(model, (str, os.PathLike)) else model
    if lm.config.get("arch") == "tfidf":  # a linear model over n-gram counts: its weights are the explanation
        raise ConfigError(
            "a tfidf classifier has no attention and no embeddings to attribute through; its largest "
            "coefficients are its explanation (model.safetensors, with the n-gram vocabulary in tokenizer.json)"
        )
    return lm


@dataclass
class Framed:
    """A text as the model reads it: ids and segment ids, and for each position the word of the text it belongs
    to (None for the special tokens the framing adds)."""

    ids: list[int]
    types: list[int]
    word_of: list[int | None]
    words: list[str]
    tokens: list[str]


def frame(lm: LM, text: str, pair: str | None = None) -> Framed:
    """`text` (and `pair`) framed as the model reads it: a classifier's TextEncoder framing (a QA model's
    `[bos] question [eos] context [eos]` is the same, as one window), a tagger's words, a GPT
    language model's `<|eos|> text` (generate's prompt), a masked-LM encoder's `[bos] text [eos]`. A text longer
    than the model's context is refused (explaining a cut text would explain another input). A tagger's words are
    CoNLL-style (punctuation apart), everyone else's are the text's whitespace-separated words."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("cannot explain an empty text")
    tok, cfg = lm.tokenizer, lm.model.config
    objective = getattr(cfg, "objective", None)
    if objective == "tag":
        if pair is not None:
            raise ConfigError("a tagger reads one text; give no pair")
        return _frame_words(lm, text)
    if objective == "span" and pair is None:
        raise ConfigError(
            "a question-answering model reads a question and a context: give the question as the text and the "
            "context as the pair (--pair)"
        )
    if objective in ("classify", "span"):
        before, between, after = _framing(TextEncoder(tok, cfg.backbone, 1 << 30), pair is not None)
    elif pair is not None:
        raise ConfigError("a text pair is only for a fine-tuned classifier (NLI); give one text")
    elif getattr(cfg, "bidirectional", False):
        before, between, after = [i for i in (tok.bos_id,) if i is not None], [], [tok.eos_id]
    else:
        before, between, after = [i for i in (tok.eos_id,) if i is not None], [], []
    ids, word_of, words = list(before), [None] * len(before), []
    for k, part in enumerate((text, pair) if pair is not None else (text,)):
        if k == 1:
            if not isinstance(pair, str) or not pair.strip():
                raise ConfigError("cannot explain an empty text pair")
            ids += between
            word_of += [None] * len(between)
        part_ids, offsets = tok.encode_with_offsets(part)
        spans = [m.span() for m in re.finditer(r"\S+", part)]
        first = len(words)
        words += [part[a:b] for a, b in spans]
        for start, _ in offsets:
            inside = [w for w, (a, b) in enumerate(spans) if a <= start < b]
            word_of.append(first + inside[0] if inside else None)
        ids += part_ids
    ids += [i for i in after if i is not None]
    word_of += [None] * (len(ids) - len(word_of))
    if objective != "tbptt":  # a recurrent LM reads any length (its block_size is the training chunk)
        _check_length(len(ids), cfg.block_size)
    types = [0] * len(ids)
    if pair is not None and objective in ("classify", "span") and cfg.backbone == "bert":
        cut = len(before) + len(tok.encode(text)) + len(between)
        types = [0] * cut + [1] * (len(ids) - cut)
    tokens = [tok.id_to_token(i) or "" for i in ids]
    return Framed(ids, types, word_of, words, tokens)


def _check_length(n: int, block: int) -> None:
    if n > block:
        raise ConfigError(
            f"the text is {n} tokens long but the model reads at most {block}; shorten it "
            "(explanations refuse over-long texts rather than cut them)"
        )


def _frame_words(lm: LM, text: str) -> Framed:
    """A tagger's framing (tasks/ner/encoding.py WordEncoder): CoNLL-style words, each encoded on its own, between
    [bos] and [eos] for a BERT backbone; `first` of each word is where its tag is read."""
    encoder = WordEncoder(lm.tokenizer, lm.model.config.backbone, lm.model.config.block_size)
    words = [w for w, _, _ in split_words(text)]
    before = [encoder.bos] if encoder.bos is not None else []
    ids, word_of = list(before), [None] * len(before)
    for w, pieces in enumerate(encoder.pieces(words)):
        ids += pieces
        word_of += [w] * len(pieces)
    if encoder.eos is not None:
        ids.append(encoder.eos)
        word_of.append(None)
    _check_length(len(ids), lm.model.config.block_size)
    tokens = [lm.tokenizer.id_to_token(i) or "" for i in ids]
    return Framed(ids, [0] * len(ids), word_of, words, tokens)


def _framing(encoder: TextEncoder, paired: bool) -> tuple[list[int], list[int], list[int]]:
    """The special tokens a TextEncoder puts before the text, between text and pair, and at the end."""
    seps = [encoder.sep] if encoder.sep is not None else []
    before = [encoder.bos] if encoder.bos is not None else []
    return before, (seps if paired else []), seps
