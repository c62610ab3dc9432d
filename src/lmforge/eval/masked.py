"""Masked-LM evaluation: loss and accuracy on the masked tokens of a split, with a fixed masking seed.

Perplexity here is exp(masked-token loss): it compares masked LMs with each other, not with causal LMs (a masked
token sees both sides of its context). Bits per byte do not apply and are reported as None.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.device import autocast
from lmforge.errors import DataError
from lmforge.models.modes import eval_mode
from lmforge.tokenizers import Tokenizer
from lmforge.train.labels import IGNORE_INDEX
from lmforge.train.masking import Masker


@torch.no_grad()
def masked_lm_scores(
    model: nn.Module,
    windows: Iterable[tuple[torch.Tensor, torch.Tensor]],
    tokenizer: Tokenizer,
    device: torch.device,
    amp_dtype=None,
    seed: int = 0,
) -> dict:
    """Scores over (inputs, targets) windows; only the inputs are read, the targets mark padding (-100).

    Every window gets the beginning-of-sequence token in front, as in training, and the same masking for a given
    seed, so two evaluations of one model on one split agree exactly, whatever their batch size.
    """
    cfg = model.config
    masker = Masker(tokenizer, cfg.mask_prob, cfg.whole_word_mask)
    generator = torch.Generator()
    row = 0
    with eval_mode(model):
        nats = torch.zeros((), dtype=torch.float64, device=device)
        correct = count = 0
        for x, y in windows:
            valid = y != IGNORE_INDEX
            x = torch.where(valid, x, torch.full_like(x, tokenizer.pad_id or 0))
            if tokenizer.bos_id is not None:
                x = torch.cat([torch.full((x.shape[0], 1), tokenizer.bos_id, dtype=x.dtype), x], dim=1)
                valid = torch.cat([torch.ones(x.shape[0], 1, dtype=torch.bool), valid], dim=1)
            # Each window is masked from its own seed and only over its real tokens, so the result does not depend on
            # the batch size (nor on which other windows share its batch).
            inputs, labels = x.clone(), torch.full_like(x, IGNORE_INDEX)
            for i in range(x.shape[0]):
                n = int(valid[i].sum())
                generator.manual_seed(seed * 1_000_003 + row)
                inputs[i, :n], labels[i, :n] = (t[0] for t in masker(x[i : i + 1, :n], generator))
                row += 1
            inputs, labels, valid = inputs.to(device), labels.to(device), valid.to(device)
            with autocast(device, amp_dtype):
                logits = model(inputs, attention_mask=valid)
            logits = logits.float().view(-1, logits.size(-1))
            flat = labels.view(-1)
            nats += F.cross_entropy(logits, flat, ignore_index=IGNORE_INDEX, reduction="sum").double()
            scored = flat != IGNORE_INDEX
            correct += int((logits.argmax(-1)[scored] == flat[scored]).sum())
            count += int(scored.sum())
    if count == 0:
        raise DataError("no token was masked for evaluation: the text is too short")
    loss = float(nats) / count
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "masked_accuracy": correct / count,
        "bits_per_byte": None,
        "tokens": count,
    }
