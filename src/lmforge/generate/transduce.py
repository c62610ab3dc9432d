"""Decoding an encoder-decoder: the next target ids one step at a time (`decode_tokens`, greedy or sampled, with or
without the decoder's KV cache), and whole batches of source texts to output texts (`decode_texts`, greedy or by
beam search, generate/beam.py). LM.transduce and the translate/summarize task decode through these."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from lmforge.generate.beam import BeamParams, beam_search
from lmforge.generate.sampling import SamplingParams, next_token
from lmforge.models.modes import eval_mode
from lmforge.models.seq2seq import Seq2Seq, decoder_start_id


@torch.no_grad()
def encode_source(tokenizer, text: str, config, cut: bool = True) -> list[int]:
    """A source's ids as the encoder-decoder reads it: its tokens (at least one), then the config's
    `source_suffix` (an imported Marian / mBART / T5's </s>), cut to the model's block when `cut`."""
    suffix = list(getattr(config, "source_suffix", None) or [])
    ids = tokenizer.encode(text)
    if cut:
        ids = (ids or [tokenizer.unk_id or 0])[: config.block_size - len(suffix)]
    return ids + suffix


def decode_tokens(
    model: Seq2Seq,
    src: torch.Tensor,
    src_mask: torch.Tensor | None,
    start_id: int,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield the next target ids (B,) one step at a time for sources (B, S); the caller decides when to stop.

    With the cache, each step feeds only the newest token; without it, the whole target so far is decoded again
    (the reference the cache is tested against).
    """
    model.eval()
    memory = model.encode(src, src_mask)
    seq = torch.full((src.shape[0], 1), start_id, dtype=torch.long, device=src.device)
    state = model.start_decoding(memory, src_mask) if use_cache else None
    for _ in range(params.max_new_tokens):
        if state is not None:
            logits = model.decode_step(seq[:, -1:], state)[:, -1]
        else:
            logits = model.decode(seq, memory, src_mask)[:, -1]
        nxt = next_token(logits, seq, params, generator)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        yield nxt


@torch.no_grad()
def decode_texts(
    model,
    tokenizer,
    sources: list[str],
    num_beams: int = 1,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    length_penalty: float = 1.0,
) -> list[str]:
    """The model's output text for each source (special tokens dropped); sources longer than the model's block
    are cut, batches hold sources of similar length so there is little padding."""
    block = model.config.block_size
    limit = block - 1 if max_new_tokens is None else min(max_new_tokens, block - 1)
    device = next(model.parameters()).device
    start, eos, pad = decoder_start_id(tokenizer), tokenizer.eos_id, tokenizer.pad_id or 0
    ids = [encode_source(tokenizer, s, model.config) for s in sources]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[list[int]] = [[] for _ in ids]
    with eval_mode(model):  # decode_tokens switches to eval mode; a validation mid-training must switch back
        for first in range(0, len(order), batch_size):
            chunk = order[first : first + batch_size]
            src = torch.full((len(chunk), max(len(ids[i]) for i in chunk)), pad, dtype=torch.long)
            mask = torch.zeros(src.shape, dtype=torch.bool)
            for row, i in enumerate(chunk):
                src[row, : len(ids[i])], mask[row, : len(ids[i])] = torch.tensor(ids[i]), True
            src, mask = src.to(device), mask.to(device)
            if num_beams > 1:
                beams = beam_search(
                    model, src, mask, start, eos, BeamParams(num_beams, limit, length_penalty)
                )
                for row, i in enumerate(chunk):
                    out[i] = beams[row][0].tokens
                continue
            done = [False] * len(chunk)
            for tokens in decode_tokens(model, src, mask, start, SamplingParams(limit, temperature=0.0)):
                for row, t in enumerate(tokens.tolist()):
                    if not done[row]:
                        done[row] = t == eos
                        out[chunk[row]] += [] if done[row] else [t]
                if all(done):
                    break
    return [tokenizer.decode(o) for o in out]
