"""From SQuAD examples to model windows and back: sliding windows over long contexts, answer positions for
training, and the n-best start/end search that maps the best span back to the context's characters.

A window is `[bos] question [eos] context-piece [eos]`; consecutive pieces of a long context overlap by
`block_size - doc_stride`-ish tokens so every answer lies whole inside at least one window. A training window whose
piece does not hold the answer points at position 0 (the `[bos]` token): "no answer here".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lmforge.errors import DataError
from lmforge.models.modes import eval_mode
from lmforge.tasks.qa.squad import QAExample
from lmforge.tokenizers import Tokenizer


@dataclass
class Window:
    example: int  # index of its example
    ids: list[int]
    types: list[int]
    context_start: int  # first position of the context piece in `ids`
    offsets: list[tuple[int, int]]  # character span in the context of each context-piece token
    start: int = 0  # answer token positions (training); 0 = not in this window
    end: int = 0


def make_windows(
    examples: list[QAExample], tokenizer: Tokenizer, block_size: int, doc_stride: int, with_answers: bool
) -> list[Window]:
    bos, sep = tokenizer.bos_id, tokenizer.eos_id
    if bos is None or sep is None:
        raise DataError("question answering needs a tokenizer with beginning- and end-of-sequence tokens")
    windows = []
    for n, ex in enumerate(examples):
        q = tokenizer.encode(ex.question)
        room = block_size - len(q) - 3
        if room < 8:
            raise DataError(
                f"question {ex.id!r} is {len(q)} tokens long; the model's window of {block_size} leaves "
                "no room for the context: shorten it or use a larger --max-length"
            )
        ctx_ids, offsets = tokenizer.encode_with_offsets(ex.context)
        answer = None
        if with_answers and ex.answers:
            a = ex.answers[0]
            answer = (a["answer_start"], a["answer_start"] + len(a["text"]))
        start = 0
        while True:
            piece = slice(start, min(start + room, len(ctx_ids)))
            ids = [bos, *q, sep, *ctx_ids[piece], sep]
            first = len(q) + 2
            w = Window(n, ids, [0] * first + [1] * (len(ids) - first), first, offsets[piece])
            if answer is not None:
                w.start, w.end = _answer_positions(w, answer)
            windows.append(w)
            if piece.stop >= len(ctx_ids):
                break
            start += min(doc_stride, room)
    return windows


def _answer_positions(w: Window, answer: tuple[int, int]) -> tuple[int, int]:
    """Token positions of the answer's first and last tokens in the window, or (0, 0) if it is not all inside."""
    s_char, e_char = answer
    tokens = [i for i, (s, e) in enumerate(w.offsets) if e > s_char and s < e_char]
    if not tokens or w.offsets[0][0] > s_char or w.offsets[-1][1] < e_char:
        return 0, 0
    return w.context_start + tokens[0], w.context_start + tokens[-1]


def collate(windows: list[Window], pad: int, device=None) -> tuple[torch.Tensor, ...]:
    width = max(len(w.ids) for w in windows)
    ids = torch.full((len(windows), width), pad, dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for i, w in enumerate(windows):
        ids[i, : len(w.ids)] = torch.tensor(w.ids)
        types[i, : len(w.types)] = torch.tensor(w.types)
        mask[i, : len(w.ids)] = 1
    out = (ids, mask, types)
    return tuple(t.to(device) for t in out) if device is not None else out


@torch.no_grad()
def window_logits(model, windows: list[Window], pad: int, device, batch_size: int = 32) -> list[np.ndarray]:
    """(T, 2) start/end logits of each window."""
    with eval_mode(model):
        out = []
        for i in range(0, len(windows), batch_size):
            chunk = windows[i : i + batch_size]
            logits = model(*collate(chunk, pad, device)).float().cpu().numpy()
            out.extend(logit[: len(w.ids)] for logit, w in zip(logits, chunk))
    return out


def best_spans(
    examples: list[QAExample],
    windows: list[Window],
    logits: list[np.ndarray],
    max_answer_tokens: int = 30,
    n_best: int = 20,
) -> list[dict]:
    """The best answer of each example over all its windows: the (start, end) pair with the highest start + end
    logit among the n_best candidates of each, end not before start, at most max_answer_tokens long, inside the
    context. The score is that pair's probability under the window's start and end softmaxes."""
    best: dict[int, dict] = {}
    for w, lg in zip(windows, logits):
        ctx = slice(w.context_start, w.context_start + len(w.offsets))
        starts, ends = lg[ctx, 0], lg[ctx, 1]
        log_p_start = starts - _logsumexp(lg[:, 0])
        log_p_end = ends - _logsumexp(lg[:, 1])
        for s in np.argsort(-starts)[:n_best]:
            for e in np.argsort(-ends)[:n_best]:
                if e < s or e - s + 1 > max_answer_tokens:
                    continue
                score = float(starts[s] + ends[e])
                if w.example not in best or score > best[w.example]["logit"]:
                    char_s, char_e = w.offsets[s][0], w.offsets[e][1]
                    best[w.example] = {
                        "logit": score,
                        "start": char_s,
                        "end": char_e,
                        "score": float(np.exp(log_p_start[s] + log_p_end[e])),
                    }
    out = []
    for n, ex in enumerate(examples):
        b = best.get(n, {"start": 0, "end": 0, "score": 0.0})
        out.append(
            {
                "id": ex.id,
                "answer": ex.context[b["start"] : b["end"]],
                "start": b["start"],
                "end": b["end"],
                "score": b["score"],
            }
        )
    return out


def _logsumexp(x: np.ndarray) -> float:
    m = float(x.max())
    return m + float(np.log(np.exp(x - m).sum()))
