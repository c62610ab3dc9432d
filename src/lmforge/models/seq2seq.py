"""An encoder–decoder Transformer (Vaswani et al., 2017): an encoder reads the source, a decoder writes the target.

The encoder's self-attention is bidirectional and ignores source padding; each decoder layer has causal
self-attention, cross-attention to the encoder's output (with the same source padding mask) and a feed-forward
block. Pre-LN by default (it trains without a careful warm-up); `norm_position="post"` is the layout of the paper.
Positions are sinusoidal (the paper) or learned; with `share_embeddings` the encoder, the decoder and the output
projection use one matrix, as in the paper. Decoding keeps a KV cache of the decoder's self-attention and computes
the cross-attention keys and values once per source (`start_decoding` / `decode_step`).

Pretraining is T5-style span corruption (objectives.Seq2SeqDenoise); paired text trains the same model.

Options that default to the layout above map Hugging Face's encoder-decoders onto this model weight for weight
(lmforge.export.hf): Marian (post-LN, sinusoidal positions with all sines before all cosines, SiLU feed-forward,
a final logits bias, <pad> as the decoder's start token), mBART (pre-LN, learned positions offset by 2 and one
table per stack, a LayerNorm after the embeddings, exact GELU, unscaled or scaled embeddings) and T5 / mT5 (RMSNorm
without biases, no absolute positions but a learned bias per relative-position bucket and head added to the
self-attention scores, ReLU or gated-GELU feed-forward, unscaled embeddings, heads of their own width, and the
decoder output scaled by n_embd**-0.5 before a tied output layer). T5 does not divide attention scores by
sqrt(head width); its query weights are imported multiplied by it, which is the same function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import ConfigError
from lmforge.models.layers import MLP, Attention, CausalSelfAttention, KVCache, make_norm


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
    # Hugging Face encoder-decoders (Marian, mBART); the defaults are the layout above.
    activation: str = "gelu_tanh"  # feed-forward: gelu_tanh | gelu (exact) | silu (Marian's swish) | relu
    scale_embedding: bool = True  # token embeddings times sqrt(n_embd) (mBART checkpoints may turn it off)
    sinusoid_layout: str = "interleaved"  # interleaved (sin, cos, sin, ...: the paper) | halves (Marian)
    position_offset: int = 0  # mBART's learned positions start at row 2; the table has block_size + 2 rows
    separate_positions: bool = False  # learned positions: one table for the encoder, one for the decoder
    embed_norm: bool = False  # a LayerNorm after each stack's embeddings (BART / mBART's layernorm_embedding)
    logits_bias: bool = False  # a fixed bias over the vocabulary added to the logits (final_logits_bias)
    # The token the decoder reads at position 0 whichever start token its callers put there (Marian: <pad>,
    # mBART: the target language's code); None: the callers' <bos> (or <eos>).
    decoder_start_token_id: int | None = None
    # Tokens every source ends with, as the model was trained to read it (imported Marian, mBART and T5: </s>);
    # lmforge's own models read sources without one.
    source_suffix: list = field(default_factory=list)
    # T5 / mT5
    norm: str = "layernorm"  # layernorm | rmsnorm (T5's, without bias)
    head_dim: int | None = (
        None  # attention heads' width (default n_embd / n_head; mT5-small: 64 with 6 heads of 512)
    )
    relative_buckets: int = 0  # > 0: T5's relative-position buckets, a learned bias per bucket and head
    relative_max_distance: int = 128  # distances beyond this share the last bucket
    output_rescale: bool = False  # the decoder output times n_embd**-0.5 before the output layer (tied T5)

    objective = "seq2seq"

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layer or self.n_layer

    @property
    def hidden(self) -> int:
        return self.mlp_hidden or 4 * self.n_embd

    @property
    def head_size(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    @property
    def tie_embeddings(self) -> bool:
        # The name the checkpoint code reads: lm_head.weight is the embedding matrix, so it is stored once.
        return self.share_embeddings

    def validate(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "decoder_layers", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.head_dim is None and self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )
        if self.position == "sinusoidal" and self.n_embd % 2:
            raise ConfigError(f"sinusoidal positions need an even model.n_embd, got {self.n_embd}")
        for key, value, choices in (
            ("norm_position", self.norm_position, ("pre", "post")),
            ("position", self.position, ("sinusoidal", "learned", "none")),
            ("norm", self.norm, ("layernorm", "rmsnorm")),
            ("activation", self.activation, ACTIVATIONS),
            ("sinusoid_layout", self.sinusoid_layout, ("interleaved", "halves")),
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
        if self.position_offset < 0:
            raise ConfigError(f"model.position_offset must be >= 0, got {self.position_offset}")
        if any(not 0 <= t < self.vocab_size for t in self.source_suffix):
            raise ConfigError(f"model.source_suffix {self.source_suffix} holds an id outside the vocabulary")
        if self.decoder_start_token_id is not None and not 0 <= self.decoder_start_token_id < self.vocab_size:
            raise ConfigError(f"model.decoder_start_token_id {self.decoder_start_token_id} is not a token id")


ACTIVATIONS = ("gelu_tanh", "gelu", "silu", "relu", "gated_gelu")


class FeedForward(MLP):
    """layers.MLP (the same weights) with the activations of Hugging Face's encoder-decoders as well, and T5 v1.1's
    gated GELU: down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, n_embd: int, hidden: int, activation: str, dropout: float, bias: bool):
        super().__init__(n_embd, hidden, activation, dropout, bias)
        if activation == "gated_gelu":
            self.gate_proj = nn.Linear(n_embd, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "gated_gelu":
            h = F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x)
            return self.dropout(self.down_proj(h))
        if self.activation in ("silu", "relu"):
            act = F.silu if self.activation == "silu" else F.relu
            return self.dropout(self.down_proj(act(self.up_proj(x))))
        return super().forward(x)


def sinusoidal_table(length: int, dim: int, layout: str = "interleaved") -> torch.Tensor:
    """The paper's positions: sin on even features, cos on odd ones, wavelengths from 2π to 10000·2π; with
    layout "halves" (Marian), the same sines in the first half of the features and the cosines in the second."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    if layout == "halves":
        table[:, : dim // 2], table[:, dim // 2 :] = torch.sin(pos * inv_freq), torch.cos(pos * inv_freq)
    else:
        table[:, 0::2] = torch.sin(pos * inv_freq)
        table[:, 1::2] = torch.cos(pos * inv_freq)
    return table


def relative_bucket(
    relative: torch.Tensor, bidirectional: bool, buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucket of each key-minus-query distance: exact buckets for small distances, logarithmic ones up to
    max_distance; a bidirectional (encoder) table gives half its buckets to keys after the query."""
    out = torch.zeros_like(relative)
    if bidirectional:
        buckets //= 2
        out += (relative > 0).long() * buckets
        relative = relative.abs()
    else:
        relative = -torch.clamp(relative, max=0)
    exact = buckets // 2
    large = (
        exact
        + (
            torch.log(relative.float().clamp(min=1) / exact)
            / math.log(max_distance / exact)
            * (buckets - exact)
        ).long()
    )
    return out + torch.where(relative < exact, relative, large.clamp(max=buckets - 1))


def attention(cfg: Seq2SeqConfig) -> Attention:
    """An encoder's self-attention or a decoder's cross-attention, with heads of cfg.head_dim when it is set."""
    return Attention(cfg.n_embd, cfg.n_head, cfg.dropout, cfg.bias, cfg.head_dim)


def norm_of(cfg: Seq2SeqConfig) -> nn.Module:
    return make_norm(cfg.norm, cfg.n_embd, cfg.norm_eps, cfg.bias)


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
        self.attn_norm = norm_of(cfg)
        self.attn = attention(cfg)
        self.mlp_norm = norm_of(cfg)
        self.mlp = FeedForward(cfg.n_embd, cfg.hidden, cfg.activation, cfg.dropout, cfg.bias)

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
        self.self_norm = norm_of(cfg)
        self.self_attn = CausalSelfAttention(
            cfg.n_embd, cfg.n_head, cfg.n_head, cfg.dropout, cfg.bias, layer, cfg.head_dim
        )
        self.cross_norm = norm_of(cfg)
        self.cross_attn = attention(cfg)
        self.mlp_norm = norm_of(cfg)
        self.mlp = FeedForward(cfg.n_embd, cfg.hidden, cfg.activation, cfg.dropout, cfg.bias)

    def forward(
        self,
        x,
        memory_kv,
        mask,
        cache: KVCache | None = None,
        pos: int = 0,
        maps: tuple | None = None,
        self_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The layer's output; with `maps` (two lists), the self- and cross-attention weights are appended to
        them (explicit path). `self_mask` (T5's relative-position bias with the causal mask, (1, H, T, pos + T))
        replaces the causal mask of the self-attention."""
        need = maps is not None

        def attend_self(h):
            out = self.self_attn(h, None, cache, pos, mask=self_mask, need_weights=need)
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
        self.dec_pos_emb = None
        if cfg.position == "learned":
            self.pos_emb = nn.Embedding(cfg.block_size + cfg.position_offset, d)
            if cfg.separate_positions:
                self.dec_pos_emb = nn.Embedding(cfg.block_size + cfg.position_offset, d)
        elif cfg.position == "sinusoidal":
            table = sinusoidal_table(cfg.block_size + cfg.position_offset, d, cfg.sinusoid_layout)
            self.register_buffer("pos_table", table, persistent=False)
        if cfg.relative_buckets:  # T5: one table per stack, shared by its layers
            self.enc_rel_bias = nn.Embedding(cfg.relative_buckets, cfg.n_head)
            self.dec_rel_bias = nn.Embedding(cfg.relative_buckets, cfg.n_head)
        norm = (lambda: norm_of(cfg)) if cfg.embed_norm else nn.Identity
        self.enc_emb_norm, self.dec_emb_norm = norm(), norm()
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layer))
        self.decoder = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.decoder_layers))
        # Pre-LN leaves the residual stream unnormalised, so each stack ends with a norm; post-LN already did.
        pre = cfg.norm_position == "pre"
        self.enc_norm = norm_of(cfg) if pre else nn.Identity()
        self.dec_norm = norm_of(cfg) if pre else nn.Identity()
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        if cfg.logits_bias:  # a buffer, as in transformers: it is loaded and saved, never trained
            self.register_buffer("final_logits_bias", torch.zeros(cfg.vocab_size))
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
    def _embed(
        self, table: nn.Embedding, idx: torch.Tensor, pos: int = 0, decoder: bool = False
    ) -> torch.Tensor:
        cfg, T = self.config, idx.shape[1]
        if pos + T > cfg.block_size:
            raise ValueError(f"sequence of {pos + T} tokens is longer than block_size {cfg.block_size}")
        if decoder and pos == 0 and cfg.decoder_start_token_id is not None:
            # The model's own start token (Marian's <pad>, mBART's language code) at position 0, whichever
            # start token the caller (training, decoding, scoring) put there.
            idx = torch.cat([torch.full_like(idx[:, :1], cfg.decoder_start_token_id), idx[:, 1:]], 1)
        positions = torch.arange(pos, pos + T, device=idx.device) + cfg.position_offset
        if cfg.position == "learned":
            learned = self.dec_pos_emb if decoder and self.dec_pos_emb is not None else self.pos_emb
            where = learned(positions)
        elif cfg.position == "sinusoidal":
            where = self.pos_table[positions]
        else:  # T5: positions enter as attention biases
            where = 0.0
        x = table(idx) * (math.sqrt(cfg.n_embd) if cfg.scale_embedding else 1.0) + where
        return self.drop((self.dec_emb_norm if decoder else self.enc_emb_norm)(x))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dec_norm(x)
        if self.config.output_rescale:
            x = x * self.config.n_embd**-0.5
        logits = self.lm_head(x)
        return logits + self.final_logits_bias if self.config.logits_bias else logits

    @property
    def _dec_table(self) -> nn.Embedding:
        return self.tok_emb if self.dec_tok_emb is None else self.dec_tok_emb

    @staticmethod
    def _attn_mask(src_mask: torch.Tensor | None) -> torch.Tensor | None:
        # (B, S) with True/1 for real tokens -> (B, 1, 1, S), broadcast over heads and queries.
        return None if src_mask is None else src_mask.bool()[:, None, None, :]

    def _relative_bias(
        self, table: nn.Embedding, queries: int, keys: int, pos: int, decoder: bool
    ) -> torch.Tensor:
        """(1, H, queries, keys): T5's bias of each query (at positions pos..) for each key (at 0..keys-1); the
        decoder's also hides later keys (-inf), as its causal mask would."""
        cfg, device = self.config, table.weight.device
        relative = (
            torch.arange(keys, device=device)[None, :]
            - torch.arange(pos, pos + queries, device=device)[:, None]
        )
        bias = table(relative_bucket(relative, not decoder, cfg.relative_buckets, cfg.relative_max_distance))
        bias = bias.permute(2, 0, 1)[None]
        if decoder:
            bias = bias.masked_fill(relative[None, None] > 0, float("-inf"))
        return bias

    def _encoder_mask(self, src: torch.Tensor, src_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The encoder's self-attention mask: the padding mask, or with relative positions a float mask (their
        bias, -inf on padding)."""
        mask = self._attn_mask(src_mask)
        if not self.config.relative_buckets:
            return mask
        S = src.shape[1]
        bias = self._relative_bias(self.enc_rel_bias, S, S, 0, decoder=False)
        return bias if mask is None else bias.masked_fill(~mask, float("-inf"))

    # ---- the two stacks --------------------------------------------------------------------------------
    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's output (B, S, n_embd); src_mask (B, S) is 1 for real tokens and 0 for padding."""
        x = self._embed(self.tok_emb, src)
        mask = self._encoder_mask(src, src_mask)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.enc_norm(x)

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor | None = None):
        """Logits (B, T, vocab) of the next target token at every position of the decoder input, without a cache."""
        memory_kv = [layer.cross_attn.keys_values(memory) for layer in self.decoder]
        return self._decoder(tgt_in, memory_kv, self._attn_mask(src_mask))

    def _decoder(self, idx, memory_kv, mask, cache: KVCache | None = None, pos: int = 0) -> torch.Tensor:
        x = self._embed(self._dec_table, idx, pos, decoder=True)
        self_mask = None
        if self.config.relative_buckets:
            self_mask = self._relative_bias(
                self.dec_rel_bias, idx.shape[1], pos + idx.shape[1], pos, decoder=True
            )
        for layer, kv in zip(self.decoder, memory_kv):
            x = layer(x, kv, mask, cache, pos, self_mask=self_mask)
        return self._logits(x)

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
        enc_mask = self._encoder_mask(src, src_mask)  # T5: with the relative-position bias
        for layer in self.encoder:
            x = layer(x, enc_mask, maps["encoder"])
        memory = self.enc_norm(x)
        y = self._embed(self._dec_table, tgt_in, decoder=True)
        self_mask = None
        if self.config.relative_buckets:
            T = tgt_in.shape[1]
            self_mask = self._relative_bias(self.dec_rel_bias, T, T, 0, decoder=True)
        mask = self._attn_mask(src_mask)
        for layer in self.decoder:
            kv = layer.cross_attn.keys_values(memory)
            y = layer(y, kv, mask, maps=(maps["decoder"], maps["cross"]), self_mask=self_mask)
        return self._logits(y), maps

    # ---- incremental decoding (greedy and sampling here; a beam search calls the same step) -------------------
    def start_decoding(self, memory: torch.Tensor, src_mask: torch.Tensor | None = None) -> DecoderState:
        cfg, B = self.config, memory.shape[0]
        cache = KVCache(
            cfg.decoder_layers,
            B,
            cfg.n_head,
            cfg.block_size,
            cfg.head_size,
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
