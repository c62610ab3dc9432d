"""Training objectives: how a batch is drawn and scored. The trainer loop is the same for all of them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data.shards import TokenShards
from lmforge.device import coarse_size
from lmforge.errors import ConfigError, DataError
from lmforge.models.modes import eval_mode
from lmforge.models.seq2seq import decoder_start_id
from lmforge.tokenizers import Tokenizer
from lmforge.train.labels import IGNORE_INDEX
from lmforge.train.masking import Masker
from lmforge.train.packing import collate_packed
from lmforge.train.packing import pack as pack_rows


class CausalLM:
    """Next-token prediction on random windows of the token stream (GPT-style pretraining)."""

    name = "clm"

    def __init__(self, data: TokenShards, model_cfg, batch_size: int, tokenizer: Tokenizer | None = None):
        data.check_block_size(model_cfg.block_size)
        self.data, self.block_size, self.batch_size = data, model_cfg.block_size, batch_size

    def next_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.sample_batch(self.batch_size, self.block_size, generator)

    @staticmethod
    def count_targets(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return (batch[1] != IGNORE_INDEX).sum()

    def state_dict(self) -> dict:
        return {}  # the random windows' position is the trainer's data generator

    def load_state_dict(self, d: dict, device: torch.device) -> None:
        pass

    @staticmethod
    def loss_sum(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Summed (not averaged) token loss, so accumulated micro-batches normalise over all their tokens."""
        x, y = batch
        logits = model(x)
        return F.cross_entropy(
            logits.float().view(-1, logits.size(-1)),
            y.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )


class TBPTT:
    """Truncated back-propagation through time for recurrent models.

    The training tokens are cut into `batch_size` parallel streams; each batch is the next `block_size` tokens
    of every stream, and the hidden state left by one batch starts the next (detached, so gradients stop at the
    chunk boundary). An epoch ends when the streams are used up; the state then starts from zero again.
    """

    name = "tbptt"

    def __init__(self, data: TokenShards, model_cfg, batch_size: int, tokenizer: Tokenizer | None = None):
        block_size = model_cfg.block_size
        stream = np.concatenate([np.asarray(a) for a in data.arrays])
        width = (stream.size - 1) // batch_size
        if width < block_size + 1:
            raise DataError(
                f"the {data.split} split has {stream.size} tokens: too few for {batch_size} streams of at least "
                f"block_size + 1 = {block_size + 1} tokens; use a smaller --model.block_size or --train.batch_size"
            )
        self.inputs = stream[: width * batch_size].reshape(batch_size, width)
        self.targets = stream[1 : width * batch_size + 1].reshape(batch_size, width)
        self.block_size, self.batch_size = block_size, batch_size
        self.pos = 0
        self.state = None

    def next_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos + 1 >= self.inputs.shape[1]:  # a new epoch
            self.pos, self.state = 0, None
        end = min(self.pos + self.block_size, self.inputs.shape[1])
        x = torch.from_numpy(self.inputs[:, self.pos : end].astype(np.int64))
        y = torch.from_numpy(self.targets[:, self.pos : end].astype(np.int64))
        self.pos = end
        return x, y

    count_targets = staticmethod(CausalLM.count_targets)

    def loss_sum(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        logits, state = model.forward_with_state(x, self.state)
        self.state = model.detach_state(state)
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")

    # The stream position and the carried state are part of the data position a resumed run restores.
    def state_dict(self) -> dict:
        state = self.state
        if state is not None:
            state = tuple(s.cpu() for s in state) if isinstance(state, tuple) else state.cpu()
        return {"pos": self.pos, "state": state}

    def load_state_dict(self, d: dict, device: torch.device) -> None:
        if not d:
            return
        self.pos = d["pos"]
        state = d["state"]
        if state is not None:
            state = tuple(s.to(device) for s in state) if isinstance(state, tuple) else state.to(device)
        self.state = state


class MaskedLM:
    """BERT-style masked language modelling on random windows of the token stream.

    Each window starts with the beginning-of-sequence token (the position sentence-level heads later read) and is
    corrupted by `Masker`: mask_prob of the tokens (or whole words) are chosen, 80% replaced by the mask token, 10%
    by a random token, 10% kept; only the chosen ones are scored.
    """

    name = "mlm"

    def __init__(self, data: TokenShards, model_cfg, batch_size: int, tokenizer: Tokenizer):
        if tokenizer.mask_id is None:
            raise DataError(
                "masked-LM training needs a tokenizer with a mask token (<|mask|>); prepare the data again"
            )
        self.bos = tokenizer.bos_id
        self.body = model_cfg.block_size - (self.bos is not None)
        data.check_block_size(self.body)
        self.data, self.batch_size = data, batch_size
        self.masker = Masker(tokenizer, model_cfg.mask_prob, model_cfg.whole_word_mask)

    def with_bos(self, x: torch.Tensor) -> torch.Tensor:
        if self.bos is None:
            return x
        return torch.cat([torch.full((x.shape[0], 1), self.bos, dtype=x.dtype), x], dim=1)

    def next_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = self.data.sample_batch(self.batch_size, self.body, generator)
        return self.masker(self.with_bos(x), generator)

    count_targets = staticmethod(CausalLM.count_targets)
    loss_sum = staticmethod(CausalLM.loss_sum)
    state_dict = CausalLM.state_dict
    load_state_dict = CausalLM.load_state_dict


def random_segments(n_items: int, n_segments: int, generator: torch.Generator) -> list[int]:
    """Split n_items into n_segments positive lengths, uniformly over the ways to do so (T5's segmentation)."""
    if n_segments == 1:
        return [n_items]
    cuts = (torch.randperm(n_items - 1, generator=generator)[: n_segments - 1] + 1).sort().values.tolist()
    bounds = [0, *cuts, n_items]
    return [b - a for a, b in zip(bounds, bounds[1:])]


class SpanCorruption:
    """T5's span corruption of one token sequence, with one mask token instead of T5's numbered sentinels.

    noise_density of the tokens (rounded, at least one) fall into spans of mean_span_length tokens on average;
    span lengths and the kept stretches between them are drawn at random. Each span becomes one mask token in the
    source; the target is every span in order, each preceded by the mask token, then end-of-sequence:

        "alice sees bob at 3 o'clock."  ->  source  "alice <M> bob at 3 o'c<M>."
                                            target  "<M>sees<M>lock<eos>"

    Our tokenizers have a single mask token, so a span is known by its order, not by its sentinel's name. Unlike
    T5, which always ends on a span, a coin flip decides whether the first span or the first kept stretch comes
    first, so the last tokens of a window are not always hidden.
    """

    def __init__(self, mask_id: int, eos_id: int, noise_density: float = 0.15, mean_span_length: float = 3.0):
        self.mask_id, self.eos_id = mask_id, eos_id
        self.noise_density, self.mean_span_length = noise_density, mean_span_length

    def counts(self, length: int) -> tuple[int, int]:
        """(noise tokens, spans) for a sequence of `length` tokens: fixed per length, so batches need no padding."""
        n_noise = min(max(round(length * self.noise_density), 1), max(length - 1, 1))
        n_spans = max(round(n_noise / self.mean_span_length), 1)
        return n_noise, min(n_spans, n_noise, max(length - n_noise, 1))

    def target_length(self, length: int) -> int:
        n_noise, n_spans = self.counts(length)
        return n_noise + n_spans + 1

    def __call__(self, ids: list[int], generator: torch.Generator) -> tuple[list[int], list[int]]:
        """(source, target) token lists for one sequence."""
        n_noise, n_spans = self.counts(len(ids))
        noise = random_segments(n_noise, n_spans, generator)
        keep = random_segments(len(ids) - n_noise, n_spans, generator)
        noise_first = bool(torch.rand((), generator=generator) < 0.5)
        source, target, pos = [], [], 0
        for n_keep, n_span in zip(keep, noise):
            for n, hidden in (
                ((n_span, True), (n_keep, False)) if noise_first else ((n_keep, False), (n_span, True))
            ):
                piece = ids[pos : pos + n]
                pos += n
                if hidden:
                    source.append(self.mask_id)
                    target += [self.mask_id, *piece]
                else:
                    source += piece
        return source, target + [self.eos_id]


def padded_width(longest: int, round_to: int = 1, limit: int | None = None) -> int:
    """A batch's padded length: `longest` rounded up to a multiple of `round_to` or, when that is larger, of an
    eighth of the power of two below it (device.coarse_size: at most 8 widths per doubling, 300 -> 320); at most
    `limit` (never below `longest`). round_to 1 leaves `longest` as it is."""
    if round_to <= 1:
        return longest
    rounded = coarse_size(longest, 8, round_to)
    return max(longest, min(rounded, limit)) if limit is not None else rounded


def collate_pairs(
    pairs: list[tuple[list[int], list[int]]],
    start_id: int,
    pad_id: int,
    round_to: int = 1,
    limit: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """(source, source mask, decoder input, labels) from (source, target) token lists, padded at the end.

    The decoder reads the target shifted right behind the start token; labels of padding are -100 (ignored).
    `round_to` pads both lengths up to a multiple of it (at most `limit`, never below the longest row): fewer
    distinct shapes for kernels built per shape (Trainer.ROUND_LENGTHS).
    """

    n = len(pairs)
    src_len = padded_width(max(len(s) for s, _ in pairs), round_to, limit)
    tgt_len = padded_width(max(len(t) for _, t in pairs), round_to, limit)
    src = torch.full((n, src_len), pad_id, dtype=torch.long)
    src_mask = torch.zeros((n, src_len), dtype=torch.bool)
    tgt_in = torch.full((n, tgt_len), pad_id, dtype=torch.long)
    labels = torch.full((n, tgt_len), IGNORE_INDEX, dtype=torch.long)
    for i, (s, t) in enumerate(pairs):
        src[i, : len(s)], src_mask[i, : len(s)] = torch.tensor(s, dtype=torch.long), True
        tgt_in[i, : len(t)] = torch.tensor([start_id, *t[:-1]], dtype=torch.long)
        labels[i, : len(t)] = torch.tensor(t, dtype=torch.long)
    return src, src_mask, tgt_in, labels


def seq2seq_loss_sum(
    model: nn.Module, batch: tuple[torch.Tensor, ...], label_smoothing: float = 0.0
) -> torch.Tensor:
    """Summed target-token loss of a collate_pairs batch."""
    src, src_mask, tgt_in, labels = batch
    logits = model(src, tgt_in, src_mask)
    return F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
        label_smoothing=label_smoothing,
    )


class Seq2SeqDenoise:
    """Encoder-decoder pretraining on plain text: T5-style span corruption (SpanCorruption) of random windows.

    The encoder reads a window of block_size tokens with its spans replaced by mask tokens; the decoder writes the
    hidden spans. Every window draws its spans from the trainer's data generator, so a resumed run is exact.
    """

    name = "seq2seq"

    def __init__(self, data: TokenShards, model_cfg, batch_size: int, tokenizer: Tokenizer):
        if tokenizer.mask_id is None or tokenizer.eos_id is None:
            raise DataError(
                "span-corruption training needs a tokenizer with <|mask|> and <|eos|>; prepare the data again"
            )
        self.corrupt = SpanCorruption(
            tokenizer.mask_id, tokenizer.eos_id, model_cfg.noise_density, model_cfg.mean_span_length
        )
        if self.corrupt.target_length(model_cfg.block_size) > model_cfg.block_size:
            raise ConfigError(
                f"model.noise_density {model_cfg.noise_density} makes targets longer than block_size "
                f"{model_cfg.block_size}; lower the noise density"
            )
        data.check_block_size(model_cfg.block_size)
        self.data, self.block_size, self.batch_size = data, model_cfg.block_size, batch_size
        self.start_id, self.pad_id = decoder_start_id(tokenizer), tokenizer.pad_id or 0
        self.label_smoothing = model_cfg.label_smoothing

    def next_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        x, _ = self.data.sample_batch(self.batch_size, self.block_size, generator)
        return collate_pairs([self.corrupt(row, generator) for row in x.tolist()], self.start_id, self.pad_id)

    @staticmethod
    def count_targets(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return (batch[-1] != IGNORE_INDEX).sum()

    def loss_sum(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return seq2seq_loss_sum(model, batch, self.label_smoothing)

    state_dict = CausalLM.state_dict
    load_state_dict = CausalLM.load_state_dict


BUCKET_BATCHES = (
    50  # batches sorted by length together: similar lengths in a batch, a different mix each epoch
)


class ShuffledEpochs:
    """Base of the fine-tuning objectives: labelled examples in shuffled epochs. Each epoch's order is drawn from
    the trainer's data generator, and the order and position are saved, so a resumed run continues the epoch.

    With the examples' token `lengths`, batches are length-bucketed: each run of BUCKET_BATCHES batches of the
    shuffled order is sorted by length and cut into batches, whose order is shuffled again. Batches are padded to
    their longest example, so similar lengths in a batch spend less compute on padding.
    """

    def __init__(self, n_examples: int, batch_size: int, lengths: list[int] | None = None):
        self.n_examples, self.batch_size = n_examples, batch_size
        self.lengths = None if lengths is None else torch.tensor(lengths)
        self.perm: torch.Tensor | None = None
        self.pos = 0
        self.poisson_rate: float | None = None  # set by DP-SGD (train/privacy.py): Poisson-sampled batches

    def poisson(self, rate: float) -> None:
        """Draw every batch by Poisson sampling instead of shuffled epochs: each example is in it with
        probability `rate`, independently (what DP-SGD's privacy accounting assumes). An empty draw is drawn again
        (probability (1 - rate) ** n_examples, e.g. 1e-14 for an expected batch of 32)."""
        self.poisson_rate = rate

    def _epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        perm = torch.randperm(self.n_examples, generator=generator)
        if self.lengths is None or self.n_examples <= self.batch_size:
            return perm
        span = self.batch_size * BUCKET_BATCHES
        chunks = [perm[i : i + span] for i in range(0, self.n_examples, span)]
        ordered = torch.cat([c[torch.argsort(self.lengths[c], stable=True)] for c in chunks])
        batches = list(ordered.split(self.batch_size))
        last = [batches.pop()] if len(batches[-1]) < self.batch_size else []  # a short batch stays last
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return torch.cat(shuffled + last)

    def next_indices(self, generator: torch.Generator) -> list[int]:
        while self.poisson_rate is not None:
            chosen = torch.rand(self.n_examples, generator=generator) < self.poisson_rate
            if chosen.any():
                return chosen.nonzero().flatten().tolist()
        if self.perm is None or self.pos >= self.n_examples:  # a new epoch, in a new order
            self.perm, self.pos = self._epoch_order(generator), 0
        chosen = self.perm[self.pos : self.pos + self.batch_size].tolist()
        self.pos += self.batch_size
        return chosen

    def state_dict(self) -> dict:
        return {"perm": self.perm, "pos": self.pos}

    def load_state_dict(self, d: dict, device: torch.device) -> None:
        if d:
            self.perm, self.pos = d["perm"], d["pos"]


def collate_labelled(
    rows: list[tuple[list[int], list[int]]], pad_id: int, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) rows of different lengths as two (B, T) tensors, padded with pad_id / IGNORE_INDEX to the
    longest row (or to `width`, when given)."""
    width = max(width or 0, max(len(x) for x, _ in rows))
    x = torch.full((len(rows), width), pad_id, dtype=torch.long)
    y = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, labels) in enumerate(rows):
        x[i, : len(ids)] = torch.tensor(ids)
        y[i, : len(labels)] = torch.tensor(labels)
    return x, y


def labelled_loss_sum(model: nn.Module, batch) -> torch.Tensor:
    """Summed cross-entropy over the labelled tokens of (inputs, labels) or of packed (inputs, labels, segments)."""
    x, y, *segments = batch
    logits = model(x, segments=segments[0]) if segments else model(x)
    return F.cross_entropy(
        logits.float().view(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


class LabelledSequences(ShuffledEpochs):
    """Causal-LM fine-tuning on (inputs, labels) rows whose labels are IGNORE_INDEX where nothing is learnt (a chat's
    user turns, a prompted pair's source): shuffled epochs, summed cross-entropy over the labelled tokens. With
    `pack`, a batch's examples share rows as wide as its longest one (train/packing.py): fewer, fuller rows, same
    loss."""

    name = "labelled-sequences"
    packs = True

    def __init__(
        self,
        rows,
        pad_id: int,
        batch_size: int,
        group_by_length: bool = False,
        pack: bool = False,
        limit: int | None = None,
    ):
        super().__init__(
            len(rows), batch_size, lengths=[len(x) for x, _ in rows] if group_by_length else None
        )
        self.rows, self.pad_id, self.packed = rows, pad_id, pack
        self.limit = limit  # the model's context: padding stops there
        # Widths padded up to a multiple of this (padded_width): the Trainer sets it (Trainer.ROUND_LENGTHS).
        self.round_to = 1

    def next_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        chosen = [self.rows[i] for i in self.next_indices(generator)]
        lengths = [len(x) for x, _ in chosen]
        width = padded_width(max(lengths), self.round_to, self.limit)
        if not self.packed:
            return collate_labelled(chosen, self.pad_id, width)
        # Packed into rows of the padded width: the rounding makes room that packing may fill.
        return collate_packed(chosen, pack_rows(lengths, width), self.pad_id, width)

    @staticmethod
    def count_targets(batch) -> torch.Tensor:
        return (batch[1] != IGNORE_INDEX).sum()

    @staticmethod
    def loss_sum(model, batch) -> torch.Tensor:
        return labelled_loss_sum(model, batch)


@torch.no_grad()
def labelled_loss(model, rows, pad_id: int, device, batch_size: int = 32) -> float:
    """Mean cross-entropy per labelled token of (inputs, labels) rows (a dev set), in eval mode."""
    total, count = 0.0, 0
    with eval_mode(model):
        for first in range(0, len(rows), batch_size):
            batch = tuple(t.to(device) for t in collate_labelled(rows[first : first + batch_size], pad_id))
            total += float(labelled_loss_sum(model, batch))
            count += int(LabelledSequences.count_targets(batch))
    return total / max(count, 1)


OBJECTIVES = {"clm": CausalLM, "tbptt": TBPTT, "mlm": MaskedLM, "seq2seq": Seq2SeqDenoise}


def build_objective(model_cfg, data: TokenShards, batch_size: int, tokenizer: Tokenizer):
    """The training objective an architecture declares (its config class's `objective`, "clm" by default)."""
    return OBJECTIVES[getattr(model_cfg, "objective", "clm")](data, model_cfg, batch_size, tokenizer)
