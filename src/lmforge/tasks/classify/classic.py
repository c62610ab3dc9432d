"""The classic-NLP options of a classifier fine-tune: word vectors for the embedding layer of a from-scratch model
(lstm, gru, cnn), optionally frozen; Snowball stemming of what the model reads; the tfidf model's classifier and
n-grams.

    --vectors wt2.vec            rows of the model's word vocabulary taken from the vectors (exact word, else its
                                 lower-cased form); the other rows keep their random start; one line reports coverage
    --freeze-vectors             the embedding layer is not trained (Kim's CNN-static)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.data.stemming import snowball_language
from lmforge.errors import ConfigError
from lmforge.models.tfidf import CLASSIFIERS
from lmforge.tasks.common import SCRATCH_CLASSIFIERS
from lmforge.tokenizers import Tokenizer

WITH_EMBEDDINGS = SCRATCH_CLASSIFIERS  # from-scratch models whose embedding layer word vectors can start


@dataclass
class ClassicOptions:
    vectors: str | None = None  # a word2vec/GloVe file for the embedding layer
    freeze_vectors: bool = False
    stem: str = ""  # Snowball language (name or ISO code) to stem the text with, "" for none
    classifier: str = "lr"  # tfidf: lr | svm
    char_ngrams: bool = False  # tfidf: also character 2-5-grams inside words
    C: float = 1.0  # tfidf: inverse regularisation strength
    min_df: int = 1  # tfidf: features seen in fewer training texts are dropped

    def validate(self, model: str) -> None:
        if self.freeze_vectors and not self.vectors:
            raise ConfigError("--freeze-vectors needs --vectors FILE")
        if self.vectors and model not in WITH_EMBEDDINGS:
            raise ConfigError(
                f"--vectors starts the embeddings of {', '.join(WITH_EMBEDDINGS)} (from scratch), not --model {model}"
            )
        if self.stem:
            self.stem = snowball_language(self.stem)
            if model not in (*WITH_EMBEDDINGS, "tfidf"):
                raise ConfigError(
                    "--stem is for the models with their own word vocabulary (tfidf, lstm, gru, cnn); "
                    "a pretrained checkpoint reads text with its own tokenizer"
                )
        if model != "tfidf" and (self.classifier != "lr" or self.char_ngrams):
            raise ConfigError("--classic-clf and --char-ngrams are options of --model tfidf")
        if self.classifier not in CLASSIFIERS:
            raise ConfigError(
                f"--classic-clf must be one of {', '.join(CLASSIFIERS)}, got {self.classifier!r}"
            )
        if not self.C > 0 or self.min_df < 1:
            raise ConfigError("the tfidf model's C must be positive and min_df at least 1")


@dataclass
class WordVectors:
    """Word vectors laid out as a model's embedding matrix (one row per token id)."""

    rows: torch.Tensor  # (vocab, dim)
    found: torch.Tensor  # (vocab,) bool: rows the vectors had
    freeze: bool
    source: str

    @property
    def dim(self) -> int:
        return self.rows.shape[1]

    def coverage(self) -> str:
        words = int(self.found.sum())
        return f"{words:,} of {len(self.found):,} vocabulary words found in {self.source} ({words / len(self.found):.1%})"


def word_vectors_for(tokenizer: Tokenizer, path: str, freeze: bool) -> WordVectors:
    """The rows of `path`'s vectors for every token of `tokenizer` (special tokens are never found)."""
    from lmforge.data.vectors import embedding_rows, load_vectors

    kv = load_vectors(path)
    specials = {i for i in tokenizer.special_ids.values() if i is not None}
    vocab = [None if i in specials else tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    rows, found = embedding_rows(kv, vocab)
    return WordVectors(torch.from_numpy(rows), torch.from_numpy(found), freeze, str(path))


def check_dim(encoder: dict, vectors: WordVectors, path: str) -> None:
    """The model takes the vectors' width, unless its config says otherwise: then they must agree."""
    if not isinstance(encoder, dict):
        raise ConfigError(f"model.encoder must be a mapping of the backbone's sizes, got {encoder!r}")
    explicit = encoder.get("n_embd")
    if explicit is not None and int(explicit) != vectors.dim:
        raise ConfigError(
            f"--vectors {path} holds {vectors.dim}-dimensional vectors but the model's embeddings are {explicit} "
            "wide (model.encoder n_embd); leave n_embd unset to take the vectors' size, or give vectors of that size"
        )
    encoder["n_embd"] = vectors.dim


def init_embeddings(model: torch.nn.Module, vectors: WordVectors) -> None:
    """Copy the found rows into the model's embedding layer (and freeze it with vectors.freeze)."""
    emb = model.backbone.tok_emb.weight
    with torch.no_grad():
        found = vectors.found.to(emb.device)
        emb[found] = vectors.rows.to(emb.device, emb.dtype)[found]
    if vectors.freeze:
        emb.requires_grad_(False)
