"""Attention maps of the Transformer families, from the exact softmax path of their attention layers.

The maps are what the model uses: the attention layers compute softmax(QK^T / sqrt(d) + mask) explicitly when
asked for their weights (models/layers.py `explicit_attention`; BERT's own explicit branch), and the outputs of
that path equal the fast `scaled_dot_product_attention` path's (tests/test_explain.py checks both to 1e-5).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from lmforge.errors import ConfigError
from lmforge.explain.common import as_lm, frame
from lmforge.generate.sampling import SamplingParams
from lmforge.generate.transduce import decode_tokens
from lmforge.lm import LM
from lmforge.models.bert import Bert
from lmforge.models.classifier import BackboneWithHead
from lmforge.models.gpt import GPT
from lmforge.models.seq2seq import Seq2Seq, decoder_start_id


@dataclass
class AttentionMaps:
    """Attention weights per kind ("self"; an encoder-decoder: "encoder", "decoder", "cross"), one (H, T, S) tensor
    per layer: row t holds how query token t spreads its attention over the key tokens (each row sums to 1)."""

    maps: dict[str, list[torch.Tensor]]
    queries: dict[str, list[str]]  # the tokens on each kind's rows
    keys: dict[str, list[str]]  # the tokens on each kind's columns
    outputs: torch.Tensor | None = field(default=None, repr=False)  # what the model computed on the way
    layers: list[int] | None = None  # the model's numbers of the layers kept (None: all, from 0)
    heads: list[int] | None = None  # the model's numbers of the heads kept (None: all, from 0)

    def select(self, layer: int | None = None, head: int | None = None) -> AttentionMaps:
        """Only one layer and/or one head (the others dropped); ConfigError for one the model does not have."""
        n_layer, n_head = len(self.layer_numbers), len(self.head_numbers)
        if layer is not None and not 0 <= layer < n_layer:
            raise ConfigError(f"--layer must be between 0 and {n_layer - 1} for this model, got {layer}")
        if head is not None and not 0 <= head < n_head:
            raise ConfigError(
                f"--head must be between 0 and {n_head - 1} (or all) for this model, got {head}"
            )
        maps = {
            kind: [
                m if head is None else m[head : head + 1]
                for i, m in enumerate(layers)
                if layer is None or i == layer
            ]
            for kind, layers in self.maps.items()
        }
        maps = {kind: layers for kind, layers in maps.items() if layers}  # a decoder with fewer layers
        return AttentionMaps(
            maps,
            self.queries,
            self.keys,
            self.outputs,
            None if layer is None else [layer],
            [h for h in self.head_numbers if head is None or h == head],
        )

    @property
    def layer_numbers(self) -> list[int]:
        """The layer numbers of the kind with the most layers (an encoder-decoder's stacks may differ)."""
        return self.layers_of(max(self.maps, key=lambda kind: len(self.maps[kind])))

    def layers_of(self, kind: str) -> list[int]:
        return self.layers if self.layers is not None else list(range(len(self.maps[kind])))

    @property
    def head_numbers(self) -> list[int]:
        return (
            self.heads if self.heads is not None else list(range(next(iter(self.maps.values()))[0].shape[0]))
        )

    def to_json(self) -> dict:
        return {
            kind: {
                "queries": self.queries[kind],
                "keys": self.keys[kind],
                "layers": self.layers_of(kind),
                "heads": self.head_numbers,
                "weights": [m.tolist() for m in layers],
            }
            for kind, layers in self.maps.items()
        }


def attentions(
    model: str | os.PathLike | LM, text: str, pair: str | None = None, device: str = "cpu"
) -> AttentionMaps:
    """Every layer's attention weights for `text` (and `pair`, for an NLI classifier): GPT decoders and BERT-style
    encoders (pretrained, or the backbone of a classifier or tagger) read the text as they would; an encoder-decoder
    reads it as its source and its greedy output as the target (decoder self-attention and cross-attention); a QA
    model reads `text` as the question and `pair` as the context."""
    lm = as_lm(model, device)
    net = lm.model
    backbone = getattr(net, "backbone", net)  # a classifier's, tagger's or QA model's encoder
    if isinstance(net, Seq2Seq):
        return _seq2seq(lm, text)
    if not isinstance(backbone, (GPT, Bert)):
        arch = lm.config.get("arch", type(net).__name__)
        raise ConfigError(
            f"attention maps need a Transformer (gpt, bert, seq2seq, or a classifier/tagger on one); "
            f"{arch} {'(' + net.config.backbone + ' backbone) ' if isinstance(net, BackboneWithHead) else ''}"
            "has no attention"
        )
    framed = frame(lm, text, pair)
    ids = torch.tensor([framed.ids], device=lm.device)
    with torch.no_grad():
        if isinstance(backbone, Bert):
            types = torch.tensor([framed.types], device=lm.device)
            hidden, maps = backbone.encode(ids, torch.ones_like(ids), types, output_attentions=True)
        else:
            hidden, maps = backbone.encode(ids, output_attentions=True)
    maps = [m[0].float().cpu() for m in maps]
    return AttentionMaps({"self": maps}, {"self": framed.tokens}, {"self": framed.tokens}, hidden)


def _seq2seq(lm: LM, text: str) -> AttentionMaps:
    tok, net = lm.tokenizer, lm.model
    src_ids = tok.encode(text) if isinstance(text, str) and text.strip() else []
    if not src_ids:
        raise ConfigError("cannot explain an empty text")
    src_ids += list(net.config.source_suffix)  # as the model reads a source (imported Marian/mBART/T5: </s>)
    block = net.config.block_size
    if len(src_ids) > block:
        raise ConfigError(
            f"the text is {len(src_ids)} tokens long but the model reads at most {block}; shorten it"
        )
    src = torch.tensor([src_ids], device=lm.device)
    start = decoder_start_id(tok)
    out = []
    with torch.no_grad():
        for step in decode_tokens(net, src, None, start, SamplingParams(block - 1, 0.0)):
            out.append(int(step[0]))
            if out[-1] == tok.eos_id or len(out) >= block - 1:
                break
        tgt = torch.tensor([[start] + out[:-1] if out and out[-1] == tok.eos_id else [start] + out])
        logits, maps = net.attentions(src, tgt.to(lm.device))
    src_tokens = [tok.id_to_token(i) or "" for i in src_ids]
    tgt_tokens = [tok.id_to_token(i) or "" for i in tgt[0].tolist()]
    maps = {k: [m[0].float().cpu() for m in v] for k, v in maps.items()}
    queries = {"encoder": src_tokens, "decoder": tgt_tokens, "cross": tgt_tokens}
    keys = {"encoder": src_tokens, "decoder": tgt_tokens, "cross": src_tokens}
    return AttentionMaps(maps, queries, keys, logits)
