"""One wrapper around `tokenizers.Tokenizer` with the special-token roles the models need (`Tokenizer`), and
`word_tokenizer`, the word-level tokenizer of a given word list (`Tokenizer.train` kind "word", ARPA import)."""

from __future__ import annotations

import collections
import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from lmforge.errors import LmforgeError, TokenizerError

KINDS = ("bpe", "wordpiece", "unigram", "char", "word")

# The special tokens lmforge adds to every tokenizer it trains, by role, in id order.
SPECIAL_TOKENS = {
    "pad": "<|pad|>",
    "unk": "<|unk|>",
    "bos": "<|bos|>",
    "eos": "<|eos|>",
    "mask": "<|mask|>",
}

# Names other tokenizers (GPT-2, BERT, Llama, T5...) use for the same roles, tried in order.
ROLE_ALIASES = {
    "pad": ["<|pad|>", "[PAD]", "<pad>"],
    "unk": ["<|unk|>", "[UNK]", "<unk>"],
    "bos": ["<|bos|>", "<s>", "[CLS]", "<|begin_of_text|>", "<|endoftext|>"],
    "eos": ["<|eos|>", "</s>", "[SEP]", "<|end_of_text|>", "<|endoftext|>"],
    "mask": ["<|mask|>", "[MASK]", "<mask>"],
}

DEFAULT_VOCAB_SIZE = {"bpe": 8192, "wordpiece": 8192, "unigram": 8192, "char": None, "word": None}

# Byte-level BPE starts from all 256 byte symbols, so its vocabulary can never be smaller than this.
MIN_BPE_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception message (the Rust side raises long, multi-line ones)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


def settled(hf: HFTokenizer) -> HFTokenizer:
    """The tokenizer as it will be after a save and a load, so that its sha256 does not change on disk.

    The trainers keep full-precision float scores (unigram), but the JSON parser of `tokenizers` may read
    them back one unit in the last place off; after one round trip the text no longer changes.
    """
    text = hf.to_str()
    for _ in range(3):
        loaded = HFTokenizer.from_str(text)
        again = loaded.to_str()
        if again == text:
            return loaded
        text = again
    return HFTokenizer.from_str(text)


def word_tokenizer(words: list[str]) -> HFTokenizer:
    """Whitespace-separated words, the classic word-level LM set-up (PTB, WikiText); the rest map to <|unk|>."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = HFTokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # decoding joins the words with single spaces
    tok.add_special_tokens(list(SPECIAL_TOKENS.values()))
    return tok


def _char_tokenizer(chars: list[str]) -> HFTokenizer:
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    tok = HFTokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    # Every code point is its own piece (newlines included); Fuse joins pieces back without spaces.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIAL_TOKENS.values()))
    return tok


def _subword_tokenizer(kind: str, vocab_size: int, min_frequency: int) -> tuple[HFTokenizer, object]:
    specials = list(SPECIAL_TOKENS.values())
    if kind == "bpe":
        # Byte-level: every string is representable, so there is no unknown token and decoding is lossless.
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif kind == "wordpiece":
        tok = HFTokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS["unk"]))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        # The trainer adds every character of the alphabet twice (as "x" and "##x") before any merge,
        # whatever vocab_size says; capping the alphabet keeps the vocabulary within vocab_size
        # (the rarest characters then encode as the unknown token, as in BERT).
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            limit_alphabet=max(1, (vocab_size - len(specials)) // 2),
            continuing_subword_prefix="##",
            show_progress=False,
        )
    elif kind == "unigram":
        tok = HFTokenizer(models.Unigram())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            unk_token=SPECIAL_TOKENS["unk"],
            show_progress=False,
        )
    else:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")
    return tok, trainer


class Tokenizer:
    """A Hugging Face tokenizer plus the ids of its special-token roles (bos, eos, pad, unk, mask)."""

    def __init__(self, hf: HFTokenizer):
        # lmforge pads and truncates batches itself; a tokenizer.json from elsewhere (e.g. a sentence-transformers
        # model) may switch both on, which would silently pad every encoded text.
        if hf.padding is not None or hf.truncation is not None:
            hf.no_padding()
            hf.no_truncation()
        self.hf = hf
        self.special_ids: dict[str, int | None] = {}
        for role, names in ROLE_ALIASES.items():
            self.special_ids[role] = next(
                (i for i in (hf.token_to_id(n) for n in names) if i is not None), None
            )

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        kind: str,
        texts: Iterable[str],
        vocab_size: int | None = None,
        min_frequency: int = 2,
    ) -> Tokenizer:
        """Train a tokenizer of `kind` on an iterable of texts (streamed, never held in memory at once)."""
        if kind not in KINDS:
            raise TokenizerError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")
        if vocab_size is not None and vocab_size <= len(SPECIAL_TOKENS):
            raise TokenizerError(
                f"--vocab-size must be larger than {len(SPECIAL_TOKENS)} (the special tokens)"
            )
        if kind == "bpe" and vocab_size is not None and vocab_size < MIN_BPE_VOCAB_SIZE:
            raise TokenizerError(
                f"--vocab-size must be at least {MIN_BPE_VOCAB_SIZE} for byte-level BPE "
                f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens); use --kind char for a smaller vocabulary"
            )
        if kind == "char":
            counts: collections.Counter[str] = collections.Counter()
            for text in texts:
                counts.update(text)
            if not any(not ch.isspace() for ch in counts):
                raise TokenizerError("cannot train a tokenizer on an empty corpus")
            # Most frequent characters first when capped, then sorted by code point for a stable vocabulary.
            ranked = sorted(counts, key=lambda ch: (-counts[ch], ch))
            if vocab_size is not None:
                ranked = ranked[: vocab_size - len(SPECIAL_TOKENS)]
            return cls(settled(_char_tokenizer(sorted(ranked))))
        if kind == "word":
            words: collections.Counter[str] = collections.Counter()
            for text in texts:
                words.update(text.split())
            if not words:
                raise TokenizerError("cannot train a tokenizer on an empty corpus")
            # Most frequent first (ties by spelling): a capped vocabulary keeps the common words, the rest is <|unk|>.
            ranked = sorted(words, key=lambda w: (-words[w], w))
            if vocab_size is not None:
                ranked = ranked[: vocab_size - len(SPECIAL_TOKENS)]
            return cls(settled(word_tokenizer(ranked)))
        vocab_size = vocab_size or DEFAULT_VOCAB_SIZE[kind]
        hf, trainer = _subword_tokenizer(kind, vocab_size, min_frequency)
        seen = [0]

        def counted(it: Iterable[str]) -> Iterator[str]:
            for text in it:
                if not seen[0] and text and not text.isspace():
                    seen[0] = 1
                yield text

        try:
            hf.train_from_iterator(counted(texts), trainer=trainer)
        except LmforgeError:
            raise  # raised by the caller's iterator (an unreadable file...): already a clear message
        except Exception as exc:  # the Rust trainer raises plain Exceptions
            message = _first_line(exc)
            if "not large enough to contain all chars" in message:
                raise TokenizerError(
                    f"--vocab-size {vocab_size} is too small for a unigram tokenizer of this corpus, which needs "
                    "one entry per distinct character; raise --vocab-size or use --kind bpe"
                ) from None
            raise TokenizerError(f"cannot train a {kind} tokenizer: {message}") from None
        if seen[0] == 0:
            raise TokenizerError("cannot train a tokenizer on an empty corpus")
        return cls(settled(hf))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a `tokenizer.json` file, or the `tokenizer.json` inside a folder."""
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise TokenizerError(
                f"no tokenizer at {path}; give a tokenizer.json file or a folder that has one"
            )
        try:
            return cls(HFTokenizer.from_file(str(p)))
        except Exception as exc:  # the Rust side raises plain Exceptions with long messages
            raise TokenizerError(f"{p} is not a valid tokenizer.json ({_first_line(exc)})") from None

    @classmethod
    def from_str(cls, json_str: str) -> Tokenizer:
        try:
            return cls(HFTokenizer.from_str(json_str))
        except Exception as exc:
            raise TokenizerError(f"not a valid tokenizer.json ({_first_line(exc)})") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write `tokenizer.json` (into `path` if it is a folder) atomically; returns the file path."""
        p = Path(path)
        if p.is_dir() or p.suffix != ".json":
            p.mkdir(parents=True, exist_ok=True)
            p = p / "tokenizer.json"
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        tmp.write_text(self.to_str(), encoding="utf-8")
        os.replace(tmp, p)
        return p

    # ---- use ------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        model = type(self.hf.model).__name__
        if model == "WordLevel":
            return "word" if type(self.hf.pre_tokenizer).__name__ == "WhitespaceSplit" else "char"
        return {"BPE": "bpe", "WordPiece": "wordpiece", "Unigram": "unigram"}.get(model, model)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int | None:
        return self.special_ids["bos"]

    @property
    def eos_id(self) -> int | None:
        return self.special_ids["eos"]

    @property
    def pad_id(self) -> int | None:
        return self.special_ids["pad"]

    @property
    def unk_id(self) -> int | None:
        return self.special_ids["unk"]

    @property
    def mask_id(self) -> int | None:
        return self.special_ids["mask"]

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without any special token added around it."""
        if self.kind == "char" and "<|" not in text:
            return self._char_ids(text).tolist()
        if len(text) > 10_000:  # the batch call lets other threads (a server's event loop) run while it works
            return self.hf.encode_batch([text], add_special_tokens=False)[0].ids
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and, for each, the (start, end) characters of `text` it came from (for span extraction)."""
        enc = self.hf.encode(text, add_special_tokens=False)
        return enc.ids, [tuple(o) for o in enc.offsets]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of many texts at once (parallel in the Rust library)."""
        if self.kind == "char":
            return [self.encode(t) for t in texts]
        # encode_batch_fast skips the character offsets: less time and memory (tokenizers >= 0.21).
        encode = getattr(self.hf, "encode_batch_fast", None) or self.hf.encode_batch
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def _char_ids(self, text: str):
        """Char-level ids by table look-up over code points: ~50x faster than one pre-token per character in
        the Rust library, and the same ids (texts holding special-token markup take the library's path)."""
        import numpy as np

        if getattr(self, "_char_table", None) is None:
            vocab = {t: i for t, i in self.hf.get_vocab(with_added_tokens=False).items() if len(t) == 1}
            table = np.full(max(map(ord, vocab), default=0) + 1, self.unk_id, dtype=np.int64)
            for ch, i in vocab.items():
                table[ord(ch)] = i
            self._char_table = table
        table = self._char_table
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.full(points.shape, self.unk_id, dtype=np.int64)
        known = points < table.size
        ids[known] = table[points[known]]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.hf.id_to_token(i)

    def to_str(self) -> str:
        return self.hf.to_str()

    def round_trips(self, text: str) -> bool:
        """Whether `text` encodes to known tokens that decode back to exactly `text` (special tokens kept): the test
        a chat role marker or a prompt separator must pass."""
        ids = self.encode(text)
        return bool(ids) and self.unk_id not in ids and self.decode(ids, skip_special_tokens=False) == text

    def sha256(self) -> str:
        """A fingerprint of the whole tokenizer (vocabulary, merges, normalisation), to match data and models."""
        return hashlib.sha256(self.to_str().encode("utf-8")).hexdigest()

    def info(self) -> dict:
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "special_tokens": {
                role: {"id": i, "token": self.id_to_token(i)}
                for role, i in self.special_ids.items()
                if i is not None
            },
            "sha256": self.sha256(),
        }

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"
