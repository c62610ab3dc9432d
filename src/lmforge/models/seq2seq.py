"""An encoder–decoder Transformer (Vaswani et al., 2017): an encoder reads the source, a decoder writes the target.

The encoder's self-attention is bidirectional and ignores source padding; each decoder layer has causal
self-attention, cross-attention to the encoder's output (with the same source padding mask) and a feed-forward
block. Pre-LN by default (it trains without a careful warm-up); `norm_position="post"` is the layout of the paper.
Positions are sinusoidal (the paper) or learned; with `share_embeddings` the encoder, the decoder and the output
projection use one matrix, as in the paper. Decoding keeps a KV cache of the decoder's self-attention and computes
the cross-attention keys and values once per source (`start_decoding` / `decode_step`).

Pretraining is T5-style span corruption (objectives.Seq2SeqDenoise); paired text trains the same model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lmforge.errors import ConfigError
from lmforge.models.layers import MLP, Attention, CausalSelfAttention, KVCache


@dataclass
class Seq2SeqConfig:
    vocab_size: int = 8192  # set from the tokenizer when training
    block_size: int = 128  # longest source and longest target (learned positions, decoder cache)
    n_layer: int = 3  # encoder layers
    n_decoder_layer: int | None = None  # default: n_layer
    n_head: int = 4
    n_embd: int = 256
    mlp_hidden: int | None = None  # default: 4 * n_embd
    dropout: float = 0.1
    bias: bool = True
    norm_eps: float = 1e-5
    norm_position: str = "pre"  # pre | post (the original paper)
    position: str = "sinusoidal"  # sinusoidal | learned
    share_embeddings: bool = True  # one matrix for encoder input, decoder input and output projection
    label_smoothing: float = 0.0  # the paper used 0.1
    # Span-corruption pretraining (objectives.Seq2SeqDenoise), as in T5.
    noise_density: float = 0.15
    mean_span_length: float = 3.0

    objective = "seq2seq"

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layer or self.n_layer

    @property
    def hidden(self) -> int:
        return self.mlp_hidden or 4 * self.n_embd

    @property
    def tie_embeddings(self) -> bool:
        # The name the checkpoint code reads: lm_head.weight is the embedding matrix, so it is stored once.
        return self.share_embeddings

    def validate(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "decoder_layers", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )
        if self.position == "sinusoidal" and self.n_embd % 2:
            raise ConfigError(f"sinusoidal positions need an even model.n_embd, got {self.n_embd}")
        for key, value, choices in (
            ("norm_position", self.norm_position, ("pre", "post")),
            ("position", self.position, ("sinusoidal", "learned")),
        ):
            if value not in choices:
                raise ConfigError(f"model.{key} must be one of {', '.join(choices)}, got {value!r}")
        for key in ("dropout", "label_smoothing"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"model.{key} must be in [0, 1), got {getattr(self, key)}")
        if not 0 < self.noise_density < 1:
            raise ConfigError(f"model.noise_density must be in (0, 1), got {self.noise_density}")
        if self.mean_span_length < 1:
            raise ConfigError(f"model.mean_span_length must be >= 1, got {self.mean_span_length}")


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """The paper's positions: sin on even features, cos on odd ones, wavelengths from 2π to 10000·2π."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq)
    return table


def keep(out: tuple[torch.Tensor, torch.Tensor], maps: list) -> torch.Tensor:
    """The output of an attention called with need_weights; its weights go to `maps`."""
    maps.append(out[1])
    return out[0]


def residual(x: torch.Tensor, norm: nn.Module, sublayer, pre: bool) -> torch.Tensor:
    """Pre-LN: x + f(norm(x)); post-LN (the paper): norm(x + f(x))."""
    return x + sublayer(norm(x)) if pre else norm(x + sublayer(x))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.pre = cfg.norm_position == "pre"
        self.attn_norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
        self.attn = Attention(cfg.n_embd, cfg.n_head, cfg.dropout, cfg.bias)
        self.mlp_norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg.n_embd, cfg.hidden, "gelu_tanh", cfg.dropout, cfg.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, maps: list | None = None) -> torch.Tensor:
        """The layer's output; with a `maps` list, the self-attention weights are appended to it (explicit path)."""

        def attend(h):
            out = self.attn(h, self.attn.keys_values(h), mask, need_weights=maps is not None)
            return out if maps is None else keep(out, maps)

        x = residual(x, self.attn_norm, attend, self.pre)
        return residual(x, self.mlp_norm, self.mlp, self.pre)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig, layer: int):
        super().__init__()
        self.pre = cfg.norm_position == "pre"
        self.self_norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
        self.self_attn = CausalSelfAttention(cfg.n_embd, cfg.n_head, cfg.n_head, cfg.dropout, cfg.bias, layer)
        self.cross_norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
        self.cross_attn = Attention(cfg.n_embd, cfg.n_head, cfg.dropout, cfg.bias)
        self.mlp_norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg.n_embd, cfg.hidden, "gelu_tanh", cfg.dropout, cfg.bias)

    def forward(
        self, x, memory_kv, mask, cache: KVCache | None = None, pos: int = 0, maps: tuple | None = None
    ) -> torch.Tensor:
        """The layer's output; with `maps` (two lists), the self- and cross-attention weights are appended to
        them (explicit path)."""
        need = maps is not None

        def attend_self(h):
            out = self.self_attn(h, None, cache, pos, need_weights=need)
            return out if maps is None else keep(out, maps[0])

        def attend_memory(h):
            out = self.cross_attn(h, memory_kv, mask, need_weights=need)
            return out if maps is None else keep(out, maps[1])

        x = residual(x, self.self_norm, attend_self, self.pre)
        x = residual(x, self.cross_norm, attend_memory, self.pre)
        return residual(x, self.mlp_norm, self.mlp, self.pre)


@dataclass
class DecoderState:
    """What one decoding step needs besides the new tokens; `decode_step` advances `pos`."""

    memory_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per decoder layer: cross-attention keys and values
    mask: torch.Tensor | None  # (B, 1, 1, S) source padding mask
    cache: KVCache  # the decoder's self-attention keys and values so far
    pos: int = 0

    def reorder(self, indices: torch.Tensor) -> None:
        """Make row i continue what row indices[i] decoded so far (a beam search reselecting its beams).

        Only the self-attention cache moves: a beam search reselects beams of the same source, whose cross-attention
        keys, values and source mask are identical rows, so those stay as they are."""
        for layer in range(len(self.cache.k)):
            self.cache.k[layer] = self.cache.k[layer].index_select(0, indices)
            self.cache.v[layer] = self.cache.v[layer].index_select(0, indices)


class Seq2Seq(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        d = cfg.n_embd
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)  # the encoder's (and, shared, everyone's) embedding
        self.dec_tok_emb = None if cfg.share_embeddings else nn.Embedding(cfg.vocab_size, d)
        if cfg.position == "learned":
            self.pos_emb = nn.Embedding(cfg.block_size, d)
        else:
            self.register_buffer("pos_table", sinusoidal_table(cfg.block_size, d), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layer))
        self.decoder = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.decoder_layers))
        # Pre-LN leaves the residual stream unnormalised, so each stack ends with a norm; post-LN already did.
        pre = cfg.norm_position == "pre"
        self.enc_norm = nn.LayerNorm(d, eps=cfg.norm_eps, bias=cfg.bias) if pre else nn.Identity()
        self.dec_norm = nn.LayerNorm(d, eps=cfg.norm_eps, bias=cfg.bias) if pre else nn.Identity()
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        if cfg.share_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def _init_weights(self, module: nn.Module) -> None:
        # The fairseq/tensor2tensor recipe: Xavier matrices, and embeddings of std d^-1/2 that are scaled by
        # sqrt(d) on input, so inputs have unit scale and a shared output projection gives logits of unit scale.
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.n_embd**-0.5)

    # ---- embeddings --------------------------------------------------------------------------------------
    def _embed(self, table: nn.Embedding, idx: torch.Tensor, pos: int = 0) -> torch.Tensor:
        T = idx.shape[1]
        if pos + T > self.config.block_size:
            raise ValueError(
                f"sequence of {pos + T} tokens is longer than block_size {self.config.block_size}"
            )
        positions = torch.arange(pos, pos + T, device=idx.device)
        where = self.pos_emb(positions) if self.config.position == "learned" else self.pos_table[positions]
        return self.drop(table(idx) * math.sqrt(self.config.n_embd) + where)

    @property
    def _dec_table(self) -> nn.Embedding:
        return self.tok_emb if self.dec_tok_emb is None else self.dec_tok_emb

    @staticmethod
    def _attn_mask(src_mask: torch.Tensor | None) -> torch.Tensor | None:
        # (B, S) with True/1 for real tokens -> (B, 1, 1, S), broadcast over heads and queries.
        return None if src_mask is None else src_mask.bool()[:, None, None, :]

    # ---- the two stacks --------------------------------------------------------------------------------
    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's output (B, S, n_embd); src_mask (B, S) is 1 for real tokens and 0 for padding."""
        x = self._embed(self.tok_emb, src)
        mask = self._attn_mask(src_mask)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.enc_norm(x)

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor | None = None):
        """Logits (B, T, vocab) of the next target token at every position of the decoder input, without a cache."""
        memory_kv = [layer.cross_attn.keys_values(memory) for layer in self.decoder]
        return self._decoder(tgt_in, memory_kv, self._attn_mask(src_mask))

    def _decoder(self, idx, memory_kv, mask, cache: KVCache | None = None, pos: int = 0) -> torch.Tensor:
        x = self._embed(self._dec_table, idx, pos)
        for layer, kv in zip(self.decoder, memory_kv):
            x = layer(x, kv, mask, cache, pos)
        return self.lm_head(self.dec_norm(x))

    def forward(
        self, src: torch.Tensor, tgt_in: torch.Tensor, src_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced logits (B, T, vocab). Pad targets at the end: causal attention keeps real tokens from
        seeing later padding, so only the source needs a mask (and padded labels are ignored by the loss)."""
        return self.decode(tgt_in, self.encode(src, src_mask), src_mask)

    def attentions(
        self, src: torch.Tensor, tgt_in: torch.Tensor, src_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Teacher-forced logits, as forward() computes them, and every layer's attention weights from the explicit
        path: "encoder" (B, H, S, S), "decoder" self-attention (B, H, T, T) and "cross" (B, H, T, S)."""
        maps: dict[str, list[torch.Tensor]] = {"encoder": [], "decoder": [], "cross": []}
        x = self._embed(self.tok_emb, src)
        mask = self._attn_mask(src_mask)
        for layer in self.encoder:
            x = layer(x, mask, maps["encoder"])
        memory = self.enc_norm(x)
        y = self._embed(self._dec_table, tgt_in)
        for layer in self.decoder:
            y = layer(y, layer.cross_attn.keys_values(memory), mask, maps=(maps["decoder"], maps["cross"]))
        return self.lm_head(self.dec_norm(y)), maps

    # ---- incremental decoding (greedy and sampling here; a beam search calls the same step) -------------------
    def start_decoding(self, memory: torch.Tensor, src_mask: torch.Tensor | None = None) -> DecoderState:
        cfg, B = self.config, memory.shape[0]
        cache = KVCache(
            cfg.decoder_layers,
            B,
            cfg.n_head,
            cfg.block_size,
            cfg.n_embd // cfg.n_head,
            memory.device,
            memory.dtype,
        )
        memory_kv = [layer.cross_attn.keys_values(memory) for layer in self.decoder]
        return DecoderState(memory_kv, self._attn_mask(src_mask), cache)

    def decode_step(self, idx: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """Logits (B, T, vocab) for new decoder tokens (B, T) that follow the ones already in `state`."""
        logits = self._decoder(idx, state.memory_kv, state.mask, state.cache, state.pos)
        state.pos += idx.shape[1]
        return logits

    # ---- accounting ------------------------------------------------------------------------------
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> dict[str, int]:
        """Matmul FLOPs of one source token through the encoder plus one target token through the decoder, both
        sequences block_size long: every weight matrix once (the cross-attention key/value projection runs on
        source tokens, the rest of the decoder on target tokens) plus the attention scores and sums of the
        encoder's self-attention and the decoder's self- and cross-attention."""
        cfg = self.config
        matmul_params = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        attention = 2 * 2 * cfg.block_size * cfg.n_embd * (cfg.n_layer + 2 * cfg.decoder_layers)
        forward = 2 * matmul_params + attention
        return {"forward": forward, "training": 3 * forward}


def decoder_start_id(tokenizer) -> int:
    """The token a target starts from: beginning-of-sequence, or end-of-sequence for tokenizers without one."""
    start = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    if start is None:
        raise ConfigError(
            "a seq2seq model needs a tokenizer with a <|bos|> or <|eos|> token; prepare the data again"
        )
    return start
