"""The model-backed augmentations of data/augment.py: words replaced by a masked LM's predictions (contextual) and
round-trip translation through two encoder-decoder checkpoints (backtranslate). Kept apart so that EDA and noise
never load torch (this module takes plain arguments and imports nothing of data/augment.py)."""

from __future__ import annotations

import random

import torch

from lmforge.checkpoint import load_for_inference
from lmforge.errors import ConfigError
from lmforge.generate.beam import BeamParams, beam_search
from lmforge.generate.transduce import decode_texts
from lmforge.models.seq2seq import decoder_start_id


class MaskedLM:
    """A BERT-style checkpoint's masked-LM head, asked for replacements of masked words."""

    def __init__(self, path: str, device: str = "auto"):
        self.loaded = load_for_inference(path, device)
        model, tok = self.loaded.model, self.loaded.tokenizer
        if getattr(model.config, "objective", None) != "mlm":
            raise ConfigError(
                f"{path} is not a masked-LM encoder (a bert checkpoint that is not fine-tuned for a task); "
                "contextual augmentation asks its masked-LM head for words"
            )
        if tok.mask_id is None:
            raise ConfigError(f"{path}'s tokenizer has no mask token")
        self.mask = tok.id_to_token(tok.mask_id)
        special = {i for i in tok.special_ids.values() if i is not None}
        # Candidates are whole words: no special token, no word-piece continuation, something alphanumeric.
        pieces = [tok.id_to_token(i) or "" for i in range(tok.vocab_size)]
        self.usable = torch.tensor(
            [
                i not in special and any(ch.isalnum() for ch in p) and not p.startswith("##")
                for i, p in enumerate(pieces)
            ]
        )

    @torch.no_grad()
    def replace(
        self, words: list[str], chosen: list[int], top_k: int, rng: random.Random, chinese: bool = False
    ) -> list[str]:
        """`words` with the words at `chosen` masked at once (one mask token each) and each replaced by one of the
        model's top_k predictions for its mask, drawn by rng (a mask past the model's context keeps its word)."""
        tok, model = self.loaded.tokenizer, self.loaded.model
        if not chosen:
            return list(words)
        chosen = sorted(chosen)
        masked = [self.mask if i in chosen else w for i, w in enumerate(words)]
        ids = tok.encode(("" if chinese else " ").join(masked))
        ids = (([tok.bos_id] if tok.bos_id is not None else []) + ids)[: model.config.block_size]
        x = torch.tensor([ids], device=self.loaded.device)
        logits = model(x)[0].float()
        logits[:, ~self.usable.to(logits.device)] = float("-inf")
        out = list(words)
        for i, pos in zip(chosen, (x[0] == tok.mask_id).nonzero().flatten().tolist()):
            top = logits[pos].topk(min(top_k + 1, int(self.usable.sum()))).indices.tolist()
            guesses = [tok.decode([j]).strip() for j in top]
            guesses = [g for g in guesses if g and g.lower() != words[i].lower()][:top_k]
            if guesses:
                out[i] = rng.choice(guesses)
        return out


def translator(path: str, device: str):
    loaded = load_for_inference(path, device)
    if getattr(loaded.model.config, "objective", None) != "seq2seq":
        raise ConfigError(
            f"{path} is not an encoder-decoder translation checkpoint (arch seq2seq, finetune --task translate); "
            "backtranslate round-trips through two of them"
        )
    if loaded.tokenizer.eos_id is None:
        raise ConfigError(f"{path}'s tokenizer has no <|eos|> token, which beam search needs")
    return loaded


@torch.no_grad()
def n_best(loaded, sources: list[str], n: int, num_beams: int, batch_size: int = 16) -> list[list[str]]:
    """The n best beam-search outputs of an encoder-decoder for each source (sources cut to its context)."""
    model, tok = loaded.model, loaded.tokenizer
    block = model.config.block_size
    params = BeamParams(max(n, num_beams), block - 1, num_return_sequences=n)
    out = []
    for first in range(0, len(sources), batch_size):
        ids = [(tok.encode(s) or [tok.unk_id or 0])[:block] for s in sources[first : first + batch_size]]
        src = torch.full((len(ids), max(map(len, ids))), tok.pad_id or 0, dtype=torch.long)
        mask = torch.zeros(src.shape, dtype=torch.bool)
        for row, i in enumerate(ids):
            src[row, : len(i)], mask[row, : len(i)] = torch.tensor(i), True
        beams = beam_search(
            model, src.to(loaded.device), mask.to(loaded.device), decoder_start_id(tok), tok.eos_id, params
        )
        out += [[tok.decode(h.tokens) for h in hyps[:n]] for hyps in beams]
    return out


def backtranslate(
    texts: list[str], via: tuple[str, str], n: int, num_beams: int = 4, device: str = "auto"
) -> list[list[str]]:
    """For each text, its n round trips: the n best pivot translations, each translated back (beam search)."""
    forward, backward = (translator(p, device) for p in via)
    pivots = n_best(forward, texts, n, num_beams)
    flat = [p for ps in pivots for p in ps]
    back = decode_texts(backward.model, backward.tokenizer, flat, num_beams=num_beams) if flat else []
    out, start = [], 0
    for ps in pivots:
        out.append(back[start : start + len(ps)])
        start += len(ps)
    return out
