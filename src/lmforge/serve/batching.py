"""Dynamic batching: one worker thread owns the model; requests queue up and compatible ones decode together.

The worker takes the oldest request, then keeps gathering for a short window (or until `max_batch_size`) the
queued requests that can share its decode: non-streaming, unseeded (or greedy), without the presence or
frequency penalty (they count a row's own new tokens, which a regrouped batch would take for its prompt) and with
the same sampling settings. They are decoded as one batch, (B, T) ids through the model once per step, prompts of different lengths
left-padded with a padding mask (GPT models), so every row sees exactly what it would see alone. Only when the
padded batch would outgrow the context (each row would then slide its window at its own step) are the requests
split by prompt length. Seeded sampling runs alone so that a seed gives the same text as
`LM.generate(..., seed=...)`.

Everything touching the model runs in the worker thread: torch releases the GIL, the event loop stays responsive,
and the model never sees two callers at once. Each row's tokens become text through generate/text.py's
`TextStream`, the rules `LM.generate` uses, so a served completion reads as the library's. A job that asks for
logprobs gets, for each token of its text, the model's log-probability of it and of the `logprobs` most likely
tokens there (from the model's own distribution: before temperature, penalties and bias).
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from lmforge.generate.sampling import SamplingParams, generate_tokens, seeded_generator
from lmforge.generate.text import TextStream


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # the most likely tokens at this step, (id, logprob), most likely first


@dataclass
class Completion:
    text: str = ""
    completion_tokens: int = 0
    finish_reason: str = "length"  # "stop" at the end-of-sequence token or a stop string
    logprobs: list[TokenLogprob] | None = None  # one per token of the text, when the job asked for them


@dataclass
class GenerateJob:
    """One prompt to continue. `on_piece` (streaming) gets text pieces as they are ready, in the worker thread."""

    prompt: str
    ids: list[int]
    params: SamplingParams
    stops: list[str]
    seed: int | None = None
    on_piece: Callable[[str], None] | None = None
    # None: no logprobs; k: each token's logprob and those of the k most likely tokens there (k may be 0).
    logprobs: int | None = None
    shown_from: int = 0  # ids[shown_from:] are the prompt's own tokens (1: after the end-of-sequence token)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def batch_key(self) -> tuple | None:
        """Jobs with equal keys may share a decode; None: this job decodes alone."""
        p = self.params
        if self.on_piece is not None or (self.seed is not None and p.temperature > 0):
            return None
        if p.presence_penalty or p.frequency_penalty:
            return None
        return p.batch_key()


@dataclass
class CallJob:
    """Any other model call (classification), run in the worker so the model has one caller at a time."""

    fn: Callable[[], object]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class _Row:
    """The decoding state of one job inside a batch: its text (a `TextStream`, the rules `LM.generate` uses), its
    token count and why it ended."""

    def __init__(self, job: GenerateJob, tokenizer):
        self.job = job
        self.stream = TextStream(tokenizer, job.prompt, job.stops)
        self.result = Completion(logprobs=None if job.logprobs is None else [])
        self.done = False

    def step(self, token: int, logprob: TokenLogprob | None = None) -> None:
        if self.done:
            return
        self.result.completion_tokens += 1
        before = len(self.stream.tokens)
        self._emit(self.stream.push(token))
        if (
            logprob is not None and len(self.stream.tokens) > before
        ):  # a token of the text (not end-of-sequence)
            self.result.logprobs.append(logprob)
        if self.stream.stopped:  # the end-of-sequence token or a stop string
            self.done, self.result.finish_reason = True, "stop"
        elif self.result.completion_tokens >= self.job.params.max_new_tokens:
            self._finish()

    def _finish(self) -> None:
        self._emit(self.stream.finish())
        self.done, self.result.finish_reason = True, "length"

    def _emit(self, piece: str) -> None:
        if piece and self.job.on_piece is not None:
            self.job.on_piece(piece)

    def close(self) -> Completion:
        if not self.done:  # max_new_tokens 0, or the job was cancelled
            self._finish()
        self.result.text = self.stream.text
        return self.result


def decode_batch(lm, jobs: list[GenerateJob], stats: BatchStats | None = None) -> list[Completion]:
    """Continue prompts together, one forward pass per step for the whole batch (left-padded when their lengths
    differ; `_groups` makes sure such a batch fits the context).

    A cancelled row (its client went away) stops at once; when the batch fits the context, so that no row ever
    slides its window, the rows still running go on as a new, smaller batch (their prompts and tokens so far) and
    the cancelled ones are dropped from the computation (counted in `stats.dropped_rows`)."""
    rows = [_Row(j, lm.tokenizer) for j in jobs]
    first = jobs[0].params
    generator = seeded_generator(jobs[0].seed, lm.device)
    model = lm.model
    fits = (
        hasattr(model, "new_cache")
        and max(len(j.ids) for j in jobs) + max(j.params.max_new_tokens for j in jobs)
        <= model.config.block_size
    )
    live = rows
    while live:
        left = max(r.job.params.max_new_tokens - r.result.completion_tokens for r in live)
        if left <= 0:
            break
        params = replace(first, max_new_tokens=left)
        x, mask = _padded([r.job.ids + r.stream.tokens for r in live], lm.device)
        seen: list = []
        watch = _logprobs_watcher([r.job.logprobs for r in live], seen)
        steps = generate_tokens(
            model, x, params, generator, prompt_mask=mask, compile=lm.compile_decoding, observe=watch
        )
        dropped = False
        for tokens in steps:
            entries = seen.pop() if seen else [None] * len(live)
            for row, t, entry in zip(live, tokens.tolist(), entries):
                row.done = row.done or row.job.cancelled.is_set()
                row.step(t, entry)
            if all(r.done for r in live):
                break
            dropped = fits and any(r.job.cancelled.is_set() for r in live)
            if dropped:
                break
        steps.close()  # a cancelled or finished batch stops computing at once
        if not dropped:
            break
        if stats is not None:
            stats.dropped_rows += sum(r.job.cancelled.is_set() for r in live)
        live = [r for r in live if not (r.done or r.job.cancelled.is_set())]
    return [r.close() for r in rows]


def _logprobs_watcher(wanted: list[int | None], out: list) -> Callable | None:
    """A generate_tokens observer that puts each step's TokenLogprob per row (None where not wanted) in `out`."""
    if all(k is None for k in wanted):
        return None
    top = max(k or 0 for k in wanted)

    def watch(logits: torch.Tensor, tokens: torch.Tensor) -> None:
        logp = logits.float().log_softmax(-1)
        chosen = logp.gather(1, tokens[:, None])[:, 0].tolist()
        best = logp.topk(min(top, logp.shape[-1]), dim=-1) if top else None
        entries = []
        for r, k in enumerate(wanted):
            alts = (
                []
                if best is None or not k
                else list(zip(best.indices[r, :k].tolist(), best.values[r, :k].tolist()))
            )
            entries.append(None if k is None else TokenLogprob(int(tokens[r]), chosen[r], alts))
        out.append(entries)

    return watch


def _padded(ids: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows of ids left-padded to one length (with each row's first id), and the padding mask (None if no row
    is padded)."""
    width = max(map(len, ids))
    x = torch.tensor([[row[0]] * (width - len(row)) + row for row in ids], dtype=torch.long, device=device)
    if all(len(row) == width for row in ids):
        return x, None
    mask = torch.tensor([[False] * (width - len(row)) + [True] * len(row) for row in ids], device=device)
    return x, mask


@dataclass
class BatchStats:
    batches: int = 0  # decode calls (each one forward pass per step)
    batched_requests: int = 0  # requests that shared their decode call with at least one other
    largest_batch: int = 0
    cancelled: int = 0
    generated_tokens: int = 0
    dropped_rows: int = 0  # cancelled rows taken out of a batch that went on without them


class Batcher:
    def __init__(self, lm, max_batch_size: int = 8, window: float = 0.01):
        self.lm = lm
        self.max_batch_size = max(1, max_batch_size)
        self.window = window
        self.stats = BatchStats()
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    # ---- submitting ---------------------------------------------------------------------------------
    def submit(self, job: GenerateJob | CallJob) -> concurrent.futures.Future:
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="lmforge-serve-worker", daemon=True)
                self._thread.start()
            self._queue.append(job)
            self._cond.notify()
        return job.future

    def cancel(self, job: GenerateJob | CallJob) -> None:
        """Stop a job; a no-op once it has finished. (Its future may already be cancelled by asyncio.)"""
        finished = job.future.done() and not job.future.cancelled()
        if isinstance(job, GenerateJob) and not finished and not job.cancelled.is_set():
            job.cancelled.set()
            self.stats.cancelled += 1

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ---- the worker -----------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed and not self._queue:
                    return
                job = self._queue.popleft()
            if isinstance(job, CallJob):
                if job.future.set_running_or_notify_cancel():  # False: its request was given up already
                    self._resolve([job], lambda j=job: [j.fn()])
                continue
            batch = self._gather(job)
            for group in _groups(batch, self.lm.model):
                self._resolve(group, lambda g=group: self._decode(g))

    def _gather(self, first: GenerateJob) -> list[GenerateJob]:
        """The first job plus queued jobs that can share its decode, waiting up to `window` for more to come."""
        key = first.batch_key()
        batch = [first]
        if key is None or self.max_batch_size == 1:
            return batch
        deadline = time.monotonic() + self.window
        with self._cond:
            while len(batch) < self.max_batch_size:
                for other in list(self._queue):
                    if (
                        len(batch) < self.max_batch_size
                        and isinstance(other, GenerateJob)
                        and other.batch_key() == key
                    ):
                        self._queue.remove(other)
                        batch.append(other)
                left = deadline - time.monotonic()
                if left <= 0 or len(batch) >= self.max_batch_size:
                    break
                self._cond.wait(left)
        return batch

    def _decode(self, group: list[GenerateJob]) -> list[Completion]:
        live = [j for j in group if not j.cancelled.is_set()]
        done = dict(zip(map(id, live), decode_batch(self.lm, live, self.stats))) if live else {}
        self.stats.batches += bool(live)
        self.stats.largest_batch = max(self.stats.largest_batch, len(live))
        self.stats.batched_requests += len(live) if len(live) > 1 else 0
        self.stats.generated_tokens += sum(c.completion_tokens for c in done.values())
        return [done.get(id(j), Completion(finish_reason="cancelled")) for j in group]

    @staticmethod
    def _resolve(jobs: list, compute: Callable[[], list]) -> None:
        try:
            results = compute()
        except BaseException as exc:  # the request gets the error; the worker keeps serving
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(exc)
            return
        for j, r in zip(jobs, results):
            if not j.future.done():
                j.future.set_result(r)


def _groups(jobs: list[GenerateJob], model) -> list[list[GenerateJob]]:
    """One left-padded batch when the model takes a padding mask and the batch fits its context, else one batch
    per prompt length."""
    width = max(len(j.ids) for j in jobs)
    new = max(j.params.max_new_tokens for j in jobs)
    if hasattr(model, "new_cache") and width + new <= model.config.block_size:
        return [jobs]
    groups: dict[int, list[GenerateJob]] = {}
    for j in jobs:
        groups.setdefault(len(j.ids), []).append(j)
    return list(groups.values())
