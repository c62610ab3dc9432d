"""What the Hugging Face family tests share: a small bilingual corpus, a sentencepiece model trained on it, and
padded source batches."""

import io

import torch

TEXT = [
    "the quick brown fox jumps over the lazy dog. a stitch in time saves nine.",
    "der schnelle braune fuchs springt über den faulen hund. le renard brun saute.",
] * 40


def sentencepiece_model(**options) -> bytes:
    """A sentencepiece Unigram model of TEXT (the serialized .model file); `options` go to its trainer."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT),
        model_writer=out,
        vocab_size=64,
        hard_vocab_limit=False,  # a tiny corpus has fewer pieces
        model_type="unigram",
        character_coverage=1.0,
        minloglevel=2,
        **options,
    )
    return out.getvalue()


def source_batch(tokenizer, texts: list[str], suffix: list[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of `texts` as lmforge encodes sources (then `suffix`), right-padded with the pad id."""
    ids = [tokenizer.encode(t) + list(suffix) for t in texts]
    src = torch.full((len(ids), max(map(len, ids))), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros_like(src)
    for i, row in enumerate(ids):
        src[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return src, mask
