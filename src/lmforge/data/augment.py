"""Data augmentation: new training texts made from labelled ones, for `lmforge augment` and `finetune --augment`.

    options = AugmentOptions(method="eda", n=4, alpha=0.1, vectors="vec.txt", seed=0)
    augment_texts(["a gripping , funny film"], options)          # [[4 new texts]]
    augment_tagged([(["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"])], options)

Methods (each seeded: the same seed gives the same texts):

- eda: Wei & Zou (2019), one of four operations per new text, in turn: synonym replacement, random insertion (a
  synonym of a word, at a random place), random swap, random deletion. Each changes max(1, int(alpha x words))
  words (deletion: each word with probability alpha, at least one and at most ceil(alpha x words)). Synonyms are
  the nearest neighbours in a word-vector file (`vectors`, word2vec/GloVe) or WordNet's synonyms when nltk's
  WordNet data is installed; stopwords are never replaced. Chinese text is cut into words by jieba.
- contextual: Kobayashi (2018): max(1, int(alpha x words)) words are masked at once and each replaced by one of
  a masked LM's `top_k` predictions (any lmforge BERT-style checkpoint, `model`).
- backtranslate: Sennrich et al. (2016): source -> pivot (the n best of a beam search) -> source (beam search)
  through two encoder-decoder translation checkpoints (`via`); deterministic, the seed plays no part.
- noise: character typos in max(1, int(alpha x words)) words: a letter inserted, deleted, swapped with its
  neighbour, or replaced by a neighbouring key on a QWERTY keyboard.

Tagged sentences (NER) keep one tag per word: eda touches only words tagged O (an insertion goes between
entities, never inside one) and noise changes letters, not words; contextual and backtranslate rewrite the word
sequence, so they are refused for tagged data. New texts that equal their original (or each other) are dropped,
so an example may get fewer than n.
"""

from __future__ import annotations

import math
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from lmforge.data.clean import load_jieba, load_stopwords
from lmforge.data.labelled import Record, Token, field_value, format_records, read_labelled, with_field
from lmforge.errors import ConfigError
from lmforge.eval.seq2seq_metrics import looks_chinese
from lmforge.outputs import check_output, staged

METHODS = ("eda", "contextual", "backtranslate", "noise")
TAGGED = ("eda", "noise")  # the methods that keep a tag per word
EDA_OPS = ("synonym", "insert", "swap", "delete")


@dataclass
class AugmentOptions:
    method: str = "eda"
    n: int = 4  # new examples per example
    alpha: float = 0.1  # the share of words each operation changes
    seed: int = 0
    vectors: str | None = None  # eda: a word2vec/GloVe file whose nearest neighbours are the synonyms
    model: str | None = None  # contextual: a masked-LM checkpoint
    via: tuple[str, str] | None = None  # backtranslate: the source->pivot and pivot->source checkpoints
    top_k: int = 5  # contextual: a replacement is drawn from the model's top_k predictions
    num_beams: int = 4  # backtranslate
    neighbours: int = 10  # eda with vectors: a synonym is one of the word's nearest neighbours...
    min_similarity: float = 0.6  # ...at least this similar (cosine)
    device: str = "auto"

    def validate(self, tagged: bool = False) -> None:
        if self.method not in METHODS:
            raise ConfigError(
                f"unknown augmentation method {self.method!r}; choose one of {', '.join(METHODS)}"
            )
        if self.n < 1:
            raise ConfigError(
                f"the number of new examples per example (--n / --augment-n) must be at least 1, got {self.n}"
            )
        if not 0 < self.alpha <= 1:
            raise ConfigError(f"--alpha must be in (0, 1], got {self.alpha}")
        if self.method == "contextual" and not self.model:
            raise ConfigError(
                "contextual augmentation needs a masked-LM checkpoint (--model; finetune: --augment-model)"
            )
        if self.method == "backtranslate" and (not self.via or len(self.via) != 2):
            raise ConfigError(
                "backtranslate needs two translation checkpoints, --via SRC2PIVOT,PIVOT2SRC (finetune: --augment-model)"
            )
        if self.top_k < 1 or self.num_beams < 1 or self.neighbours < 1:
            raise ConfigError("--top-k, --num-beams and the number of neighbours must be at least 1")
        if tagged and self.method not in TAGGED:
            raise ConfigError(
                f"{self.method} rewrites whole sentences, so it cannot keep NER tags aligned; use {' or '.join(TAGGED)}"
            )


# ---- words --------------------------------------------------------------------------------------------------
def split_words(text: str, chinese: bool) -> list[str]:
    """Whitespace words, or jieba's words for Chinese (its spaces dropped)."""
    if chinese:
        return [w for w in load_jieba().cut(text) if w.strip()]
    return text.split()


def join_words(words: list[str], chinese: bool) -> str:
    return "".join(words) if chinese else " ".join(words)


def is_word(w: str) -> bool:
    return any(ch.isalnum() for ch in w)


_LETTERS = re.compile(r"[^\W\d_]+(?:[-'’][^\W\d_]+)*")


def has_synonyms(w: str) -> bool:
    """Whether a word is one EDA looks synonyms up for: letters (inner hyphens or apostrophes allowed), so not
    numbers, punctuation or the clitics tokenized corpora split off ('s, n't)."""
    return bool(_LETTERS.fullmatch(w)) and w.lower() not in ("n't", "n’t")


def count_for(n_words: int, alpha: float) -> int:
    """Wei & Zou's number of words an operation changes: max(1, int(alpha x words))."""
    return max(1, int(alpha * n_words))


# ---- synonyms -----------------------------------------------------------------------------------------------
class Synonyms:
    """Synonyms of a word: its nearest neighbours in a vectors file, else WordNet's lemmas (nltk data)."""

    def __init__(self, vectors: str | None, neighbours: int = 10, min_similarity: float = 0.5):
        self.neighbours, self.min_similarity = neighbours, min_similarity
        self.kv = None
        self.wordnet = None
        if vectors:
            from lmforge.data.vectors import load_vectors

            self.kv = load_vectors(vectors)
        else:
            self.wordnet = wordnet_or_none()
            if self.wordnet is None:
                raise ConfigError(
                    "eda needs synonyms: give a word-vectors file (--vectors; `lmforge vectors train` makes one) or "
                    "install nltk's WordNet data (python -m nltk.downloader wordnet)"
                )
        self.cache: dict[str, list[str]] = {}

    def __call__(self, word: str) -> list[str]:
        if word not in self.cache:
            self.cache[word] = self.lookup(word)
        return self.cache[word]

    def lookup(self, word: str) -> list[str]:
        low = word.lower()
        if self.kv is not None:
            key = word if word in self.kv.key_to_index else low if low in self.kv.key_to_index else None
            if key is None:
                return []
            near = self.kv.most_similar(key, topn=self.neighbours)
            return [w for w, s in near if s >= self.min_similarity and w.lower() != low and has_synonyms(w)]
        names = {
            lemma.name().replace("_", " ")
            for synset in self.wordnet.synsets(low)
            for lemma in synset.lemmas()
        }
        return sorted(n for n in names if n.lower() != low and " " not in n)


def wordnet_or_none():
    """nltk's WordNet reader when nltk and its data are installed (never downloaded here), else None."""
    try:
        from nltk.corpus import wordnet
    except ImportError:
        return None
    try:
        wordnet.synsets("good")  # loads the data, or raises LookupError when it is not installed
    except LookupError:
        return None
    return wordnet


# ---- EDA ----------------------------------------------------------------------------------------------------
def eda_op(
    op: str,
    words: list[str],
    tags: list[str] | None,
    alpha: float,
    rng: random.Random,
    synonyms: Callable[[str], list[str]],
    stopwords: frozenset[str],
) -> tuple[list[str], list[str] | None]:
    """One EDA operation on a word list (and its tags: only words tagged O are touched)."""
    words, tags = list(words), None if tags is None else list(tags)
    free = [i for i in range(len(words)) if tags is None or tags[i] == "O"]
    k = count_for(len(words), alpha)
    if op == "synonym":
        candidates = [i for i in free if has_synonyms(words[i]) and words[i].lower() not in stopwords]
        rng.shuffle(candidates)
        done = 0
        for i in candidates:
            options = synonyms(words[i])
            if options:
                words[i] = same_case(words[i], rng.choice(options))
                done += 1
                if done == k:
                    break
    elif op == "insert":
        sources = [w for w in (words[i] for i in free) if has_synonyms(w) and w.lower() not in stopwords]
        rng.shuffle(sources)
        added = 0
        for w in sources:
            options = synonyms(w)
            if not options:
                continue
            # Never inside an entity: the word after the gap must not continue one (I-/E- tag).
            gaps = [
                g
                for g in range(len(words) + 1)
                if tags is None or g == len(words) or tags[g][:2] not in ("I-", "E-")
            ]
            g = rng.choice(gaps)
            words.insert(g, rng.choice(options))
            if tags is not None:
                tags.insert(g, "O")
            added += 1
            if added == k:
                break
    elif op == "swap":
        for _ in range(k):
            if len(free) < 2:
                break
            a, b = rng.sample(free, 2)
            words[a], words[b] = words[b], words[a]
    elif op == "delete":
        if len(free) < 1 or len(words) < 2:
            return words, tags
        chosen = [i for i in free if rng.random() < alpha]
        cap = min(math.ceil(alpha * len(words)), len(words) - 1)
        if not chosen:
            chosen = [rng.choice(free)]
        rng.shuffle(chosen)
        drop = set(chosen[:cap])
        words = [w for i, w in enumerate(words) if i not in drop]
        tags = None if tags is None else [t for i, t in enumerate(tags) if i not in drop]
    else:
        raise ConfigError(f"unknown EDA operation {op!r}")
    return words, tags


def same_case(word: str, new: str) -> str:
    """`new` in the case of `word` (vector vocabularies are often lower-cased): UPPER, Title or as it is."""
    if word.isupper() and len(word) > 1:
        return new.upper()
    return new[:1].upper() + new[1:] if word[:1].isupper() else new


# ---- noise --------------------------------------------------------------------------------------------------
QWERTY = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]


@lru_cache(maxsize=1)
def keyboard_neighbours() -> dict[str, str]:
    """The keys around each letter on a QWERTY keyboard (same row and the rows above and below)."""
    where = {ch: (r, c) for r, row in enumerate(QWERTY) for c, ch in enumerate(row)}
    out = {}
    for ch, (r, c) in where.items():
        out[ch] = "".join(
            o for o, (r2, c2) in where.items() if o != ch and abs(r2 - r) <= 1 and abs(c2 - c) <= 1
        )
    return out


def typo(word: str, rng: random.Random) -> str:
    """`word` with one character-level typo: insert, delete, swap with the next, or a neighbouring key."""
    near = keyboard_neighbours()
    ops = ["insert", "key"] + (["delete"] if len(word) > 1 else []) + (["swap"] if len(word) > 1 else [])
    for _ in range(8):  # a swap of equal letters or a key with no neighbours changes nothing: try again
        op, i = rng.choice(ops), rng.randrange(len(word))
        ch = word[i]
        pool = near.get(ch.lower(), "")
        if op == "insert":
            extra = rng.choice(pool) if pool else ch  # a neighbouring key hit too, or a doubled character
            out = word[: i + 1] + (extra.upper() if ch.isupper() else extra) + word[i + 1 :]
        elif op == "delete":
            out = word[:i] + word[i + 1 :]
        elif op == "swap":
            i = min(i, len(word) - 2)
            out = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        else:
            if not pool:
                continue
            new = rng.choice(pool)
            out = word[:i] + (new.upper() if ch.isupper() else new) + word[i + 1 :]
        if out != word and out:
            return out
    return word


def noise_words(words: list[str], alpha: float, rng: random.Random) -> list[str]:
    candidates = [i for i, w in enumerate(words) if is_word(w)]
    out = list(words)
    for i in rng.sample(candidates, min(len(candidates), count_for(len(words), alpha))):
        out[i] = typo(words[i], rng)
    return out


# ---- the entry points ---------------------------------------------------------------------------------------
def augment_texts(texts: list[str], options: AugmentOptions) -> list[list[str]]:
    """For each text, up to `options.n` new texts (new ones only: none equals the text or another of its own)."""
    options.validate()
    if options.method == "backtranslate":
        from lmforge.data.augment_models import backtranslate

        outs = backtranslate(texts, options.via, options.n, options.num_beams, options.device)
        return [distinct(t, o, options.n) for t, o in zip(texts, outs)]
    if options.method == "contextual":
        return contextual(texts, options)
    chinese = looks_chinese(texts)
    out = []
    for text, new in zip(
        texts, augment_word_lists([(split_words(t, chinese), None) for t in texts], options, chinese)
    ):
        out.append(distinct(text, [join_words(w, chinese) for w, _ in new], options.n))
    return out


def augment_tagged(
    sentences: list[tuple[list[str], list[str]]], options: AugmentOptions
) -> list[list[tuple[list[str], list[str]]]]:
    """For each (words, tags) sentence, up to `options.n` new ones with a tag per word (eda and noise only)."""
    options.validate(tagged=True)
    chinese = looks_chinese([" ".join(w) for w, _ in sentences[:200]])
    out = []
    for (words, _), new in zip(sentences, augment_word_lists(sentences, options, chinese)):
        seen, kept = {tuple(words)}, []
        for w, t in new:
            if tuple(w) not in seen and w:
                seen.add(tuple(w))
                kept.append((w, t))
        out.append(kept)
    return out


def augment_word_lists(
    items: list[tuple[list[str], list[str] | None]], options: AugmentOptions, chinese: bool
) -> list[list[tuple[list[str], list[str] | None]]]:
    """n variants of each word list (eda or noise), in order, from one generator seeded by options.seed."""
    rng = random.Random(options.seed)
    if options.method == "noise":
        return [[(noise_words(w, options.alpha, rng), t) for _ in range(options.n)] for w, t in items]
    synonyms = Synonyms(options.vectors, options.neighbours, options.min_similarity)
    stopwords = load_stopwords("zh" if chinese else "en")
    out = []
    for words, tags in items:
        ops = list(EDA_OPS)
        rng.shuffle(ops)  # which operation the first new text gets; then in turn
        out.append(
            [
                eda_op(ops[i % 4], words, tags, options.alpha, rng, synonyms, stopwords)
                for i in range(options.n)
            ]
        )
    return out


def contextual(texts: list[str], options: AugmentOptions) -> list[list[str]]:
    from lmforge.data.augment_models import MaskedLM

    chinese = looks_chinese(texts)
    stopwords = load_stopwords("zh" if chinese else "en")
    mlm = MaskedLM(options.model, options.device)
    rng = random.Random(options.seed)
    out = []
    for text in texts:
        words = split_words(text, chinese)
        candidates = [i for i, w in enumerate(words) if is_word(w) and w.lower() not in stopwords]
        k = min(len(candidates), count_for(len(words), options.alpha))
        new = [
            join_words(mlm.replace(words, rng.sample(candidates, k), options.top_k, rng, chinese), chinese)
            for _ in range(options.n)
        ]
        out.append(distinct(text, new, options.n))
    return out


_SPACE = re.compile(r"\s+")


def distinct(original: str, texts: list[str], n: int) -> list[str]:
    """The first n texts that differ from the original and from each other (whitespace runs made one space)."""
    seen, out = {_SPACE.sub(" ", original).strip()}, []
    for t in texts:
        t = _SPACE.sub(" ", t).strip()
        if t and t not in seen:
            seen.add(t)
            out.append(t)
    return out[:n]


def augment_file(
    path: str | os.PathLike,
    out: str | os.PathLike,
    options: AugmentOptions,
    text_field: str = "text",
    only_new: bool = False,
    overwrite: bool = False,
) -> dict:
    """Write `path`'s examples (unless only_new), each followed by its new ones, to `out` in `path`'s format;
    returns the report (examples, new examples, those that got fewer than n, seconds)."""
    options.validate()
    check_output(out, folder=False, overwrite=overwrite, inputs=[path])
    lf = read_labelled(path, by_number=text_field.isdigit())
    start = time.perf_counter()
    if lf.kind == "conll":
        options.validate(tagged=True)
        sentences = [([t.word for t in r.tokens], [t.tag for t in r.tokens]) for r in lf.records]
        new = [
            [
                Record(tokens=[tagged_token(r, w, t) for w, t in zip(words, tags)], document=r.document)
                for words, tags in outs
            ]
            for r, outs in zip(lf.records, augment_tagged(sentences, options))
        ]
    else:
        texts = [field_value(lf, r, text_field) for r in lf.records]
        for r, t in zip(lf.records, texts):
            if not t.strip():
                raise ConfigError(f"{lf.path}:{r.line} has an empty {text_field!r} (the --text-field)")
        new = [
            [with_field(lf, r, text_field, t) for t in outs]
            for r, outs in zip(lf.records, augment_texts(texts, options))
        ]
    records = [x for r, outs in zip(lf.records, new) for x in ([] if only_new else [r]) + outs]
    with staged(out, folder=False) as tmp:
        tmp.write_text(format_records(lf, records), encoding="utf-8")
    return {
        "input": str(path),
        "out": str(out),
        "method": options.method,
        "examples": len(lf.records),
        "new": sum(map(len, new)),
        "short": sum(len(outs) < options.n for outs in new),
        "written": len(records),
        "seconds": round(time.perf_counter() - start, 2),
    }


def tagged_token(record: Record, word: str, tag: str) -> Token:
    """A CoNLL line for a word of a new sentence: the original line's middle columns when the word is one of the
    sentence's (a swapped or typo'd word keeps its POS/chunk only approximately), "_" for an inserted word."""
    width = len(record.tokens[0].columns)
    same = next((t for t in record.tokens if t.word == word), None)
    middle = same.columns[1:-1] if same is not None else ["_"] * (width - 2)
    return Token([word, *middle, tag])
