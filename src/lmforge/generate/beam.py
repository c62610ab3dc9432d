"""Batched beam search, for the encoder-decoder (models.seq2seq) and for decoder-only models (models.gpt), on top
of their cached decoding steps; and greedy or sampled continuation of prompts for decoder-only models.

Each source keeps `num_beams` running hypotheses. At every step all beams of all sources are extended by one token
in one decoder call; of the 2·num_beams best (beam, token) candidates per source, those ending in end-of-sequence
become finished hypotheses and the best others the next beams (the cache of keys and values is reordered to follow
them).

A hypothesis is scored as in GNMT / Hugging Face: the sum of its tokens' log-probabilities (its end-of-sequence
token included) divided by length**length_penalty, length counting those same tokens. length_penalty > 0 favours
longer outputs, < 0 shorter ones.

As in transformers, the log-probabilities are processed before candidates are ranked, and the processed values are
what a hypothesis accumulates: CTRL's repetition penalty (a seen token's log-probability times the penalty) and the
no-repeat n-gram ban see the whole sequence the decoder has read, the prompt of a decoder-only model included (an
encoder-decoder's: its start token); min_new_tokens bans end-of-sequence. With do_sample (transformers' "beam-search
multinomial sampling"), the log-probabilities are then divided by the temperature and filtered by top_k / top_p
(keeping at least 2 tokens), and the 2·num_beams candidates per source are drawn without replacement from the
softmax of their running scores instead of taken best first (by the Gumbel-top-k trick, see `drawn`).

A decoder-only model reads its prompt and its output in one context: a GPT has no padding mask, so prompts are
batched with prompts of the same length only (the outputs are those of one prompt at a time), and an output ends
when the context is full (block_size + 1 - prompt length tokens, its end-of-sequence included). A prompt longer
than the context is a ConfigError before any work.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace

import torch

from lmforge.errors import ConfigError
from lmforge.generate.sampling import (
    MIN_TEMPERATURE,
    REPETITION_PENALTY_RANGE,
    SamplingParams,
    banned_ngram_tokens,
    generate_tokens,
)


@dataclass
class BeamParams:
    num_beams: int = 4
    max_new_tokens: int = 100
    length_penalty: float = 1.0
    # True: a source is done once it has num_beams finished hypotheses. False: also keep going while a running
    # beam could still beat the worst finished one (judged at its current length, Hugging Face's heuristic).
    early_stopping: bool = True
    no_repeat_ngram_size: int = 0  # 0: off; n: never produce an n-gram that already occurs in the output
    min_new_tokens: int = 0  # end-of-sequence is forbidden before this many tokens
    num_return_sequences: int = 1
    repetition_penalty: float = 1.0  # CTRL's over the prompt (or start token) and the output so far; 1: none
    # Beam-search multinomial sampling (transformers' do_sample with num_beams > 1) and its warpers
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None  # None or 0: off
    top_p: float | None = None  # None or 1: off

    def validate(self) -> None:
        if self.num_beams < 1:
            raise ConfigError(f"num_beams must be >= 1, got {self.num_beams}")
        if not 1 <= self.num_return_sequences <= self.num_beams:
            raise ConfigError(
                f"num_return_sequences must be between 1 and num_beams ({self.num_beams}), got {self.num_return_sequences}"
            )
        if self.max_new_tokens < 0 or self.min_new_tokens < 0 or self.no_repeat_ngram_size < 0:
            raise ConfigError("max_new_tokens, min_new_tokens and no_repeat_ngram_size must be >= 0")
        low, high = REPETITION_PENALTY_RANGE
        if not low <= self.repetition_penalty <= high:
            raise ConfigError(
                f"repetition_penalty must be between {low:g} and {high:g} (1: none), got {self.repetition_penalty}"
            )
        if self.do_sample and not (math.isfinite(self.temperature) and self.temperature >= MIN_TEMPERATURE):
            raise ConfigError(
                f"temperature must be a finite number >= {MIN_TEMPERATURE:g}, got {self.temperature}"
            )
        if self.top_k is not None and self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Hypothesis:
    tokens: list[int]  # the output, without the start token and without end-of-sequence
    logprob: float  # sum of the log-probabilities of tokens (+ end-of-sequence when finished)
    score: float  # logprob / length**length_penalty
    finished: bool  # ended with end-of-sequence (False: stopped by max_new_tokens)

    @property
    def length(self) -> int:
        return len(self.tokens) + self.finished


def _score(logprob: float, length: int, alpha: float) -> float:
    return logprob / max(length, 1) ** alpha


@torch.no_grad()
def beam_search(
    model,
    src: torch.Tensor,
    src_mask: torch.Tensor | None,
    start_id: int,
    eos_id: int,
    params: BeamParams,
    generator: torch.Generator | None = None,
) -> list[list[Hypothesis]]:
    """For each source of the batch (B, S), its hypotheses in descending score order (num_beams of them);
    `generator` draws the candidates of do_sample."""
    params.validate()
    model.eval()
    K = params.num_beams
    memory = model.encode(src, src_mask).repeat_interleave(K, dim=0)
    mask = None if src_mask is None else src_mask.repeat_interleave(K, dim=0)
    state = model.start_decoding(memory, mask)
    first = torch.full((src.shape[0] * K, 1), start_id, dtype=torch.long, device=src.device)
    # What the decoder reads before its output (the token it starts from), which the processors see as HF's do
    start = getattr(model.config, "decoder_start_token_id", None)
    return _search(
        lambda last: model.decode_step(last, state)[:, -1],
        state.reorder,
        first,
        [[start_id if start is None else start]] * src.shape[0],
        eos_id,
        params,
        src.device,
        generator,
    )


@torch.no_grad()
def beam_search_prompts(
    model,
    prompts: list[list[int]],
    eos_id: int,
    params: BeamParams,
    batch_size: int = 32,
    generator: torch.Generator | None = None,
) -> list[list[Hypothesis]]:
    """For each prompt (token ids) of a decoder-only model, its hypotheses in descending score order: the
    continuations of the prompt, without the prompt (which the repetition penalty and n-gram ban see)."""
    params.validate()
    model.eval()
    out: list[list[Hypothesis]] = [[] for _ in prompts]
    for rows, batch in same_length_batches(model, prompts, batch_size):
        state = _CachedPrompts(model, batch, params.num_beams)
        steps = replace(params, max_new_tokens=min(params.max_new_tokens, state.room))
        prefixes = [prompts[r] for r in rows]
        for row, hyps in zip(
            rows, _search(state.step, state.reorder, None, prefixes, eos_id, steps, batch.device, generator)
        ):
            out[row] = hyps
    return out


@torch.no_grad()
def continue_prompts(
    model,
    prompts: list[list[int]],
    eos_id: int | None,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    batch_size: int = 32,
) -> list[list[int]]:
    """Greedy (temperature 0) or sampled continuations of a decoder-only model's prompts, each up to its
    end-of-sequence token (left out), max_new_tokens, or the end of the context."""
    params.validate()
    out: list[list[int]] = [[] for _ in prompts]
    block = model.config.block_size
    for rows, batch in same_length_batches(model, prompts, batch_size):
        steps = replace(params, max_new_tokens=min(params.max_new_tokens, block + 1 - batch.shape[1]))
        for row, tokens in zip(
            rows, tokens_until(generate_tokens(model, batch, steps, generator, use_cache), len(rows), eos_id)
        ):
            out[row] = tokens
    return out


def tokens_until(
    steps: Iterable[torch.Tensor], rows: int, eos_id: int | Collection[int] | None
) -> list[list[int]]:
    """Each row's tokens from a decoder's steps (one (rows,) tensor a step), up to its end-of-sequence token (any of
    them, given several; left out); stops pulling steps once every row has ended."""
    ends = {eos_id} if eos_id is None or isinstance(eos_id, int) else set(eos_id)
    out: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    for tokens in steps:
        for row, t in enumerate(tokens.tolist()):
            if not done[row]:
                done[row] = t in ends
                out[row] += [] if done[row] else [t]
        if all(done):
            break
    return out


def same_length_batches(model, prompts: list[list[int]], batch_size: int):
    """(prompt indices, ids (n, T)) of prompts of one length T, at most batch_size at a time, after checking that
    every prompt fits the model's context (one ConfigError for all that do not)."""
    block = model.config.block_size
    if any(not p for p in prompts):
        raise ConfigError("a prompt is empty; a decoder-only model continues at least one token")
    long = [len(p) for p in prompts if len(p) > block]
    if long:
        raise ConfigError(
            f"{len(long)} of {len(prompts)} prompt(s) are longer than the model's context of {block} "
            f"tokens (the longest: {max(long)}); shorten the source text"
        )
    device = next(model.parameters()).device
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    for length in sorted(by_length):
        rows = by_length[length]
        for first in range(0, len(rows), batch_size):
            chunk = rows[first : first + batch_size]
            yield chunk, torch.tensor([prompts[i] for i in chunk], dtype=torch.long, device=device)


class _CachedPrompts:
    """A decoder-only model's KV cache after prompts (B, T) of one length, its rows widened to K beams each. The
    first step returns the logits the prompts ended with; later steps feed each beam's newest token."""

    def __init__(self, model, prompts: torch.Tensor, K: int):
        B, T = prompts.shape
        self.model, self.pos, self.room = model, T, model.config.block_size + 1 - T
        self.cache = model.new_cache(B)
        self.pending = model(prompts, self.cache, 0)[:, -1].repeat_interleave(K, dim=0)
        self.reorder(torch.arange(B, device=prompts.device).repeat_interleave(K))

    def step(self, last: torch.Tensor | None) -> torch.Tensor:
        if self.pending is not None:
            logits, self.pending = self.pending, None
            return logits
        logits = self.model(last, self.cache, self.pos)[:, -1]
        self.pos += 1
        return logits

    def reorder(self, indices: torch.Tensor) -> None:
        """Row i of the cache continues what row indices[i] held (a beam search reselecting its beams)."""
        for layer in range(len(self.cache.k)):
            self.cache.k[layer] = self.cache.k[layer].index_select(0, indices)
            self.cache.v[layer] = self.cache.v[layer].index_select(0, indices)


def _search(
    next_logits,
    reorder,
    last: torch.Tensor | None,
    prefixes: list[list[int]],
    eos_id: int,
    params: BeamParams,
    device,
    generator: torch.Generator | None = None,
) -> list[list[Hypothesis]]:
    """The search itself. next_logits(last tokens (B*K, 1)) gives the next logits (B*K, V) of every beam (row b*K + k is
    beam k of source b); reorder(indices) makes row i of the decoder's cache continue row indices[i]; prefixes[b] is
    what the decoder read before source b's output (the processors' view of the sequence starts there)."""
    B, K = len(prefixes), params.num_beams
    alpha = params.length_penalty
    # Only the first beam is live at the start: the others would be copies of it and fill the beam with duplicates.
    beam_logprob = torch.full((B, K), float("-inf"), device=device)
    beam_logprob[:, 0] = 0.0
    seqs: list[list[int]] = [[] for _ in range(B * K)]
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    done = [False] * B

    for step in range(params.max_new_tokens):
        logp = next_logits(last).float().log_softmax(-1)  # (B*K, V)
        logp = processed(logp, [prefixes[r // K] + seq for r, seq in enumerate(seqs)], step, eos_id, params)
        V = logp.shape[-1]
        cand = (beam_logprob[:, :, None] + logp.view(B, K, V)).view(B, K * V)
        if params.do_sample:
            top_lp, top_idx = drawn(cand, min(2 * K, K * V), generator)
        else:
            top_lp, top_idx = cand.topk(min(2 * K, K * V), dim=-1)
            top_lp, top_idx = top_lp.tolist(), top_idx.tolist()
        next_rows, next_tokens, next_lp = [], [], []
        for b in range(B):
            chosen: list[tuple[int, int, float]] = []
            for rank, (lp, idx) in enumerate(zip(top_lp[b], top_idx[b])):
                beam, token = divmod(idx, V)
                row = b * K + beam
                if lp == float("-inf"):
                    break
                if token == eos_id:
                    # As in Hugging Face: an end-of-sequence candidate counts only if it ranks among the num_beams
                    # best, so a beam of 1 ends exactly where greedy decoding ends.
                    if rank < K and not done[b]:
                        finished[b].append(Hypothesis(list(seqs[row]), lp, _score(lp, step + 1, alpha), True))
                    continue
                chosen.append((row, token, lp))
                if len(chosen) == K:
                    break
            while len(chosen) < K:  # too few live candidates (a tiny vocabulary, bans): pad with dead beams
                chosen.append((b * K, eos_id, float("-inf")))
            done[b] = done[b] or _is_done(finished[b], chosen[0][2], step + 1, params)
            for row, token, lp in chosen:
                next_rows.append(row)
                next_tokens.append(token)
                next_lp.append(lp)
        if all(done):
            break
        index = torch.tensor(next_rows, device=device)
        reorder(index)
        seqs = [seqs[r] + [t] for r, t in zip(next_rows, next_tokens)]
        beam_logprob = torch.tensor(next_lp, device=device).view(B, K)
        last = torch.tensor(next_tokens, dtype=torch.long, device=device)[:, None]

    for b in range(B):
        if not done[b]:  # stopped by max_new_tokens: the running beams compete with the finished ones
            for k in range(K):
                lp = float(beam_logprob[b, k])
                if lp > float("-inf"):
                    seq = seqs[b * K + k]
                    finished[b].append(Hypothesis(list(seq), lp, _score(lp, len(seq), alpha), False))
        finished[b].sort(key=lambda h: h.score, reverse=True)
        finished[b] = finished[b][:K]
    return finished


def processed(
    logp: torch.Tensor, seen: list[list[int]], step: int, eos_id: int, params: BeamParams
) -> torch.Tensor:
    """Next-token log-probabilities (rows, V) after transformers' processors (their result, whose order does not
    matter here: bans are -inf, which the penalty keeps): the repetition penalty
    and the n-gram ban over each row's `seen` tokens (prompt or start token, then output), the end-of-sequence ban
    of min_new_tokens, and with do_sample the temperature, top_k and top_p warpers (keeping at least 2 tokens: an
    end-of-sequence token and one to go on with)."""
    if params.repetition_penalty != 1.0:
        penalty = params.repetition_penalty
        for row, tokens in enumerate(seen):
            ids = torch.tensor(sorted(set(tokens)), dtype=torch.long, device=logp.device)
            prev = logp[row, ids]
            logp[row, ids] = torch.where(prev < 0, prev * penalty, prev / penalty)
    if params.no_repeat_ngram_size:
        for row, tokens in enumerate(seen):
            banned = banned_ngram_tokens(tokens, params.no_repeat_ngram_size)
            if banned:
                logp[row, banned] = float("-inf")
    if step < params.min_new_tokens:
        logp[:, eos_id] = float("-inf")
    if not params.do_sample:
        return logp
    if params.temperature != 1.0:
        logp = logp / params.temperature
    keep = 2
    if params.top_k:
        kth = torch.topk(logp, min(max(params.top_k, keep), logp.shape[-1]), dim=-1).values[:, -1:]
        logp = logp.masked_fill(logp < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1.0:
        ascending, order = torch.sort(logp, descending=False, dim=-1)
        drop = ascending.softmax(-1).cumsum(-1) <= (1 - params.top_p)
        drop[:, -keep:] = False
        logp = logp.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logp


def drawn(cand: torch.Tensor, n: int, generator: torch.Generator | None) -> tuple[list, list]:
    """(scores, indices) of up to n candidates per row of running scores (B, K*V), drawn without replacement from
    their softmax, as transformers' beam sampling draws them, best score first; impossible candidates (-inf: top_k,
    bans) are never drawn, so a row may give fewer.

    Drawn as the n largest of score + Gumbel noise (the Gumbel-top-k trick: the same distribution as n successive
    draws without replacement), in log space: softmax probabilities that underflow to 0 at a small temperature
    would leave torch.multinomial choosing among them at random, where this keeps their order."""
    u = torch.rand(cand.shape, generator=generator, device=cand.device).clamp_(min=1e-20, max=1 - 1e-7)
    keys = cand - torch.log(-torch.log(u))
    chosen = keys.topk(n, dim=-1).indices
    scores = cand.gather(1, chosen)
    scores, order = scores.sort(dim=-1, descending=True)
    chosen = chosen.gather(1, order)
    out_scores, out_indices = [], []
    for lp, idx in zip(scores.tolist(), chosen.tolist()):
        keep = [i for i, v in enumerate(lp) if v > float("-inf")]
        out_scores.append([lp[i] for i in keep])
        out_indices.append([idx[i] for i in keep])
    return out_scores, out_indices


def _is_done(finished: list[Hypothesis], best_running: float, length: int, params: BeamParams) -> bool:
    if len(finished) < params.num_beams:
        return False
    if params.early_stopping:
        return True
    worst = min(h.score for h in finished)
    return _score(best_running, length, params.length_penalty) <= worst
