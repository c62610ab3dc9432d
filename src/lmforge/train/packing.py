"""Sequence packing for causal-LM fine-tuning (chat, decoder-only translate/summarize).

Short examples padded to the longest in a batch waste compute on padding; packed, several examples share one row
of up to the model's context. Each keeps its own positions (counted from 0) and attends only to itself
(GPT.encode's `segments`), so a packed batch trains the same per-example function as an unpacked one.
"""

from __future__ import annotations

import bisect

import torch

from lmforge.train.labels import IGNORE_INDEX

PAD_SEGMENT = -1  # the document number of a row's padding tail: its labels are ignored


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Example indices grouped into rows whose lengths sum to at most `capacity`: best-fit decreasing (longest
    first, each into the row it fills most tightly), which leaves few half-empty rows. Deterministic."""
    if any(n > capacity for n in lengths):
        raise ValueError(f"an example of {max(lengths)} tokens does not fit a row of {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row number), sorted
    for i in order:
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at == len(free):
            rows.append([i])
            room, row = capacity - lengths[i], len(rows) - 1
        else:
            room, row = free.pop(at)
            rows[row].append(i)
            room -= lengths[i]
        bisect.insort(free, (room, row))
    return rows


def collate_packed(
    rows: list[tuple[list[int], list[int]]], groups: list[list[int]], pad_id: int, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets, segments) of packed rows: each group's (ids, targets) examples side by side, padded to the
    longest row of the batch (or to `width`, when given); segments number the examples of a row (padding:
    PAD_SEGMENT)."""
    widths = [sum(len(rows[i][0]) for i in group) for group in groups]
    x = torch.full((len(groups), max(width or 0, *widths)), pad_id, dtype=torch.long)
    y = torch.full_like(x, IGNORE_INDEX)
    segments = torch.full_like(x, PAD_SEGMENT)
    for r, group in enumerate(groups):
        at = 0
        for number, i in enumerate(group):
            ids, targets = rows[i]
            x[r, at : at + len(ids)] = torch.tensor(ids)
            y[r, at : at + len(targets)] = torch.tensor(targets)
            segments[r, at : at + len(ids)] = number
            at += len(ids)
    return x, y, segments
