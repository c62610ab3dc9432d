"""Cross-entropy, perplexity and bits per byte of a language model on shards or a text file.

Bits per byte divide the total information (nats / ln 2) by the UTF-8 bytes of the text, so models with
different tokenizers compare on equal terms. A text file is read, cleaned and cut into documents, each followed by
end-of-sequence, the way the model's training data was prepared (the convention its checkpoint records), so that
it scores as it would prepared.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.checkpoint import load_for_inference
from lmforge.data.prepare import DOC_SPLITS, iter_clean_documents, text_convention
from lmforge.data.shards import TokenShards, read_manifest, stack_rows
from lmforge.device import autocast
from lmforge.errors import ConfigError, DataError, TokenizerError
from lmforge.eval.masked import masked_lm_scores
from lmforge.models.modes import eval_mode
from lmforge.models.registry import TASK_MODELS
from lmforge.models.seq2seq import decoder_start_id
from lmforge.train.labels import IGNORE_INDEX
from lmforge.train.objectives import SpanCorruption, collate_pairs, seq2seq_loss_sum


@torch.no_grad()
def sum_nll(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    amp_dtype=None,
) -> tuple[float, int]:
    """Total negative log-likelihood (nats) and number of predicted tokens over (inputs, targets) batches."""
    with eval_mode(model):
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            with autocast(device, amp_dtype):
                logits = model(x)
            total += F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), y.view(-1), ignore_index=-100, reduction="sum"
            ).double()
            count += int((y != -100).sum())
    return float(total), count


def summarize(nats: float, tokens: int, n_bytes: float) -> dict:
    loss = nats / max(tokens, 1)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bits_per_byte": nats / math.log(2) / n_bytes if n_bytes else float("nan"),
        "tokens": tokens,
        "bytes": int(round(n_bytes)),
    }


def describe_scores(scores: dict) -> str:
    """One human line for an evaluation result (evaluate()'s keys, or a run's val_* metrics)."""
    s = {key.removeprefix("val_"): value for key, value in scores.items()}
    shown = [
        ("loss", "loss", ".4f"),
        ("perplexity", "perplexity", ".2f"),
        ("masked_accuracy", "masked-token accuracy", ".3f"),
        ("bits_per_byte", "bits/byte", ".4f"),
        ("accuracy", "accuracy", ".4f"),
        ("macro_f1", "macro-F1", ".4f"),
        ("f1", "F1", ".4f"),
        ("exact_match", "exact match", ".4f"),
        ("bleu", "BLEU", ".2f"),
        ("chrf", "chrF", ".2f"),
        ("rougeL", "ROUGE-L", ".2f"),
    ]
    return "  ".join(f"{label} {s[key]:{fmt}}" for key, label, fmt in shown if s.get(key) is not None)


def text_windows(ids: list[int], block_size: int, batch_size: int):
    """Non-overlapping windows over one token sequence, as (inputs, targets) batches."""
    xs, ys = [], []
    t = torch.tensor(ids, dtype=torch.long)
    for start in range(0, len(ids) - 1, block_size):
        chunk = t[start : start + block_size + 1]
        xs.append(chunk[:-1])
        ys.append(chunk[1:])
        if len(xs) == batch_size:
            yield stack_rows(xs, ys)
            xs, ys = [], []
    if xs:
        yield stack_rows(xs, ys)


def is_masked_lm(model: nn.Module) -> bool:
    return getattr(model.config, "objective", "clm") == "mlm"


def is_seq2seq(model: nn.Module) -> bool:
    return getattr(model.config, "objective", "clm") == "seq2seq"


@torch.no_grad()
def seq2seq_scores(
    model: nn.Module,
    windows: Iterable[tuple[torch.Tensor, torch.Tensor]],
    tokenizer,
    device: torch.device,
    amp_dtype=None,
    seed: int = 0,
) -> dict:
    """Span-corruption loss of an encoder-decoder over (inputs, targets) windows (objectives.Seq2SeqDenoise).

    Only the inputs are read; the targets mark padding (-100). Each window is corrupted from its own seed, so two
    evaluations of one model on one split agree whatever their batch size. Perplexity is exp(loss) over the
    target tokens (hidden spans, their mask tokens and end-of-sequence, without label smoothing): it compares
    denoisers with each other, not with causal LMs, and bits per byte do not apply.
    """

    cfg = model.config
    corrupt = SpanCorruption(tokenizer.mask_id, tokenizer.eos_id, cfg.noise_density, cfg.mean_span_length)
    start, pad = decoder_start_id(tokenizer), tokenizer.pad_id or 0
    generator = torch.Generator()
    row = 0
    with eval_mode(model):
        nats = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        for x, y in windows:
            pairs = []
            for ids, n in zip(x.tolist(), (y != IGNORE_INDEX).sum(1).tolist()):
                generator.manual_seed(seed * 1_000_003 + row)
                pairs.append(corrupt(ids[:n], generator))
                row += 1
            batch = tuple(t.to(device) for t in collate_pairs(pairs, start, pad))
            with autocast(device, amp_dtype):
                nats += seq2seq_loss_sum(model, batch).double()
            count += int((batch[-1] != IGNORE_INDEX).sum())
    if count == 0:
        raise DataError("no text to evaluate: the split is empty")
    loss = float(nats) / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bits_per_byte": None, "tokens": count}


def evaluate_shards(
    model: nn.Module, shards, tokenizer, batch_size: int, max_tokens: int | None, device, amp_dtype=None
) -> dict:
    """The scores of one split of a data directory, the way the model's family is scored.

    Causal models: every token predicted from the ones before it (non-overlapping windows); recurrent and n-gram
    models: the split read in order as one stream; masked LMs: masked-token loss and accuracy (objectives.MaskedLM);
    encoder-decoders: the loss of restoring span-corrupted windows (objectives.Seq2SeqDenoise).
    """
    if is_masked_lm(model):
        body = model.config.block_size - (tokenizer.bos_id is not None)
        return masked_lm_scores(
            model, shards.windows(body, batch_size, max_tokens), tokenizer, device, amp_dtype
        )
    if is_seq2seq(model):
        windows = shards.windows(model.config.block_size, batch_size, max_tokens)
        return seq2seq_scores(model, windows, tokenizer, device, amp_dtype)
    if hasattr(model, "score_stream"):
        stream = np.concatenate([np.asarray(a) for a in shards.arrays])[:max_tokens]
        nats, count = model.score_stream(stream)
    else:
        nats, count = sum_nll(
            model, shards.windows(model.config.block_size, batch_size, max_tokens), device, amp_dtype
        )
    # Bytes in proportion to the tokens scored: exact for a full sweep, an estimate for a partial one.
    return summarize(nats, count, shards.bytes * count / shards.tokens)


# A text file given as it is: no cleaning, no document ends inside it (how evaluate read every file before the
# convention was recorded, and how it reads one for a model without a recorded convention).
AS_IS = "none"
# An n-gram imported from an ARPA file has no recorded data; ARPA models score sentences, one per line, each
# ended by </s>.
ARPA_CONVENTION = {"doc_split": "line", "eos_after": "document"}


def text_convention_of(lm, doc_split: str | None = None) -> dict | None:
    """How `lm`'s training data turned text into tokens (data.prepare.text_convention): recorded in its checkpoint
    config, else read from the manifest of its data directory when that still exists; `doc_split` overrides the
    document splitting ("none": the text as it is, no convention). None when nothing is known."""
    if doc_split is not None and doc_split not in (*DOC_SPLITS, AS_IS):
        raise ConfigError(f"doc_split must be one of {', '.join((*DOC_SPLITS, AS_IS))}, not {doc_split!r}")
    if doc_split == AS_IS:
        return None
    data = (getattr(lm, "config", None) or {}).get("data") or {}
    convention = data.get("text")
    if convention is None and data.get("dir") and (Path(data["dir"]) / "manifest.json").is_file():
        try:
            convention = text_convention(read_manifest(data["dir"]))
        except DataError:
            convention = None
    if convention is None and not data and hasattr(lm.model, "score_stream"):
        convention = ARPA_CONVENTION
    if doc_split is not None:
        return {**(convention or {}), "doc_split": doc_split, "eos_after": "document"}
    return convention


def prepared_ids(path: Path, tokenizer, convention: dict) -> tuple[list[int], int]:
    """The token stream of a text file under `convention`, as `prepare` writes it (each document's tokens, then
    end-of-sequence), and the UTF-8 bytes of its cleaned documents."""
    ids: list[int] = []
    n_bytes = 0
    docs: list[str] = []

    def flush() -> None:
        for seq in tokenizer.encode_batch(docs):
            ids.extend(seq)
            ids.append(tokenizer.eos_id)
        docs.clear()

    for doc in iter_clean_documents(str(path), convention):
        docs.append(doc)
        n_bytes += len(doc.encode("utf-8"))
        if len(docs) >= 2048:
            flush()
    flush()
    return ids, n_bytes


def evaluate(
    model_or_path,
    data: str | os.PathLike,
    split: str = "val",
    max_tokens: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    doc_split: str | None = None,
) -> dict:
    """Loss, perplexity and bits per byte of a checkpoint (a path, or a loaded one: an `LM` or a
    `checkpoint.Loaded`) on a data directory's split ("val", "train", or "test" when prepared with a test
    fraction) or a text file.

    A text file is read, cleaned and split into documents each followed by end-of-sequence, as the model's training
    data was prepared (text_convention_of; never deduplicated); `doc_split` ("file", "paragraph", "line") overrides
    the document splitting, "none" scores the text as it is. Returns {"loss", "perplexity", "bits_per_byte",
    "tokens", "bytes"}.
    """
    loaded = isinstance(model_or_path, (str, os.PathLike))
    lm = load_for_inference(model_or_path, device=device) if loaded else model_or_path
    task = TASK_MODELS.get(getattr(lm.model.config, "objective", None))
    if task is not None:
        raise ConfigError(
            f"{lm.path or 'this model'} is a fine-tuned {task[0]} model: evaluate it with "
            f"--task {task[1]} on a labelled file"
        )
    block = lm.model.config.block_size
    path = Path(data)
    if path.is_dir():
        if doc_split is not None:
            raise ConfigError(f"doc_split reads a text file; {data} is a data directory, prepared already")
        shards = TokenShards(path, split)
        expected = shards.manifest["tokenizer"]["sha256"]
        if expected != lm.tokenizer.sha256():
            raise TokenizerError(
                f"{data} was tokenized with a different tokenizer than the model's; prepare the data with "
                f"--tokenizer {lm.path}/tokenizer.json or evaluate on a text file"
            )
        if shards.tokens < 2:
            raise DataError(f"the {split} split of {data} has fewer than 2 tokens")
        return evaluate_shards(
            lm.model, shards, lm.tokenizer, batch_size, max_tokens, lm.device, lm.amp_dtype
        )
    if not path.is_file():
        raise DataError(f"{data} does not exist; give a prepared data directory or a UTF-8 text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{data} is not UTF-8 text") from None
    if not text:
        raise DataError(f"{data} is empty")
    convention = text_convention_of(lm, doc_split)
    if convention is not None:
        if lm.tokenizer.eos_id is None:
            raise TokenizerError(
                f"{lm.path or 'this model'}'s tokenizer has no end-of-sequence token to end documents with; "
                "evaluate with doc_split none (--doc-split none)"
            )
        return evaluate_stream(
            lm, *prepared_ids(path, lm.tokenizer, convention), data, batch_size, max_tokens
        )
    if is_masked_lm(lm.model) or is_seq2seq(lm.model):  # their windows read the tokens alike, eos or not
        return evaluate_stream(
            lm, lm.tokenizer.encode(text), len(text.encode("utf-8")), data, batch_size, max_tokens
        )
    if hasattr(lm.model, "score_stream"):
        ids = lm.tokenizer.encode(text)[:max_tokens]
        nats, count = lm.model.score_stream(np.array(ids, dtype=np.int64))
        if max_tokens is not None and max_tokens < len(ids):
            text = lm.tokenizer.decode(ids)
        return summarize(nats, count, len(text.encode("utf-8")))
    ids = lm.tokenizer.encode(text)
    # Start from an end-of-sequence token so the first real token is scored too, as in the training stream.
    if lm.tokenizer.eos_id is not None:
        ids = [lm.tokenizer.eos_id] + ids
    n_bytes = len(text.encode("utf-8"))
    if max_tokens is not None and len(ids) - 1 > max_tokens:
        ids = ids[: max_tokens + 1]
        n_bytes = len(lm.tokenizer.decode(ids, skip_special_tokens=True).encode("utf-8"))
    if len(ids) < 2:
        raise DataError(f"{data} has too little text to evaluate")
    nats, count = sum_nll(lm.model, text_windows(ids, block, batch_size), lm.device, lm.amp_dtype)
    return summarize(nats, count, n_bytes)


def evaluate_stream(lm, ids: list[int], n_bytes: int, data, batch_size: int, max_tokens: int | None) -> dict:
    """The scores of a token stream laid out as a prepared split (documents each ended by eos), the way
    evaluate_shards scores one; a causal model also predicts the first token, from an eos before it."""
    if not ids:
        raise DataError(f"{data} has too little text to evaluate")
    model, block = lm.model, lm.model.config.block_size
    if is_masked_lm(model) or is_seq2seq(model):
        ids = ids[:max_tokens]
        if is_masked_lm(model):
            # The windows' inputs are what a masked LM reads; one extra id makes them cover the last real token.
            windows = text_windows(ids + [ids[-1]], block - (lm.tokenizer.bos_id is not None), batch_size)
            return masked_lm_scores(model, windows, lm.tokenizer, lm.device, lm.amp_dtype)
        windows = text_windows(ids + [ids[-1]], block, batch_size)  # as above: the inputs cover every token
        return seq2seq_scores(model, windows, lm.tokenizer, lm.device, lm.amp_dtype)
    total = len(ids)
    if hasattr(model, "score_stream"):
        nats, count = model.score_stream(np.array(ids[:max_tokens], dtype=np.int64))
    else:
        ids = [lm.tokenizer.eos_id] + ids[:max_tokens]
        nats, count = sum_nll(model, text_windows(ids, block, batch_size), lm.device, lm.amp_dtype)
    # Bytes in proportion to the tokens scored: exact for the whole file, an estimate for a part of it.
    return summarize(nats, count, n_bytes * min(count, total) / total)
