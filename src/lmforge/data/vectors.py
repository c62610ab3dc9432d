"""Static word vectors: train word2vec / fastText with gensim, read and write the word2vec (text and binary) and
GloVe formats, nearest neighbours and analogies, analogy and similarity benchmarks, and the embedding matrix of a
model's word vocabulary.

    kv = load_vectors("vec.txt")                  # a gensim KeyedVectors (word2vec text/binary or GloVe text)
    nearest(kv, "king", 10); analogy(kv, "king - man + woman", 5)
    rows, found = embedding_rows(kv, ["<|pad|>", "the", "film"])   # (3, dim) float32 and which rows were found

Files are read with gensim's word2vec-format reader only (never its pickle-based `.model` files), so loading a
vectors file cannot run code. Training writes word2vec format: text, or binary when the output ends in `.bin`;
a fastText model is saved as its word vectors (its subword vectors for unseen words are not kept).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from lmforge.errors import ConfigError, DataError
from lmforge.extras import require
from lmforge.outputs import check_output, staged

KINDS = ("word2vec", "fasttext")
# Lower-cased words: letters/digits with inner hyphens or apostrophes ("well-made", "don't"), and clitics that
# tokenized corpora split off ("'s", "n't" in SST-2 and the Penn Treebank); other punctuation is dropped.
_WORD = re.compile(r"\w+(?:[-'’]\w+)*|'\w+")


def gensim_module():
    return require("gensim", extra="classic", feature="word vectors (lmforge vectors)")


def tokenize(text: str, segment: bool = False) -> list[str]:
    """The lower-cased words of `text` (Chinese cut into words by jieba with segment=True)."""
    text = text.lower()
    if segment:
        from lmforge.data.clean import load_jieba

        return [w for w in load_jieba().cut(text) if _WORD.fullmatch(w) or (w.strip() and w.isalnum())]
    return _WORD.findall(text)


@dataclass
class VectorOptions:
    """How `train_vectors` trains (the CLI's `vectors train` flags)."""

    kind: str = "word2vec"  # word2vec | fasttext
    dim: int = 300
    sg: bool = True  # skip-gram; False: CBOW
    window: int = 5
    min_count: int = 5
    epochs: int = 5
    negative: int = 5
    seed: int = 0
    workers: int = 1  # one worker thread makes a run reproducible from its seed
    segment: bool = False  # Chinese: jieba words
    text_field: str = "text"  # the field of .jsonl / .csv / .tsv inputs

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"--kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("dim", "window", "min_count", "epochs", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.negative < 0:
            raise ConfigError(f"--negative must be >= 0, got {self.negative}")


def is_prepared_dir(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / "manifest.json").is_file()


def _prepared_lines(data_dir: str) -> Iterator[str]:
    """The text of a prepared data directory's train split, decoded from its token shards, line by line."""
    from lmforge.data.shards import TokenShards, load_prepared

    _, tokenizer = load_prepared(data_dir)
    shards, eos = TokenShards(data_dir, "train"), tokenizer.eos_id
    for arr in shards.arrays:
        ids = np.asarray(arr)
        cuts = np.flatnonzero(ids == eos) if eos is not None else np.array([], dtype=np.int64)
        start = 0
        for end in [*cuts.tolist(), ids.size]:
            if end > start:
                yield from tokenizer.decode(ids[start:end].tolist()).split("\n")
            start = end + 1


def read_sentences(inputs: Iterable[str], text_field: str = "text", segment: bool = False) -> list[list[str]]:
    """The tokenized lines of prepared data directories (their train text) and text, JSONL, CSV or TSV files.

    Held in memory (words interned): word2vec reads the corpus once per epoch, and a WikiText-103-sized corpus
    (100M words) still fits in a few GB."""
    from lmforge.data.prepare import iter_documents

    sentences: list[list[str]] = []
    for given in inputs:
        lines = (
            _prepared_lines(given) if is_prepared_dir(given) else iter_documents([given], text_field, "line")
        )
        for line in lines:
            words = tokenize(line, segment)
            if words:
                sentences.append([sys.intern(w) for w in words])
    if not sentences:
        raise DataError(f"no words in {', '.join(inputs)}; give text files or a prepared data directory")
    return sentences


def train_vectors(
    inputs: list[str], out: str | os.PathLike, options: VectorOptions | None = None, overwrite: bool = False
) -> dict:
    """Train word2vec or fastText vectors on `inputs` and write them to `out` (word2vec text format, or binary
    when `out` ends in .bin); returns a summary (vocabulary, dimension, corpus size, seconds)."""
    options = options or VectorOptions()
    options.validate()
    out = check_output(out, folder=False, overwrite=overwrite, inputs=inputs)
    gensim = gensim_module()
    sentences = read_sentences(inputs, options.text_field, options.segment)
    words = sum(len(s) for s in sentences)
    cls = gensim.models.Word2Vec if options.kind == "word2vec" else gensim.models.FastText
    start = time.perf_counter()
    model = cls(
        vector_size=options.dim,
        sg=int(options.sg),
        window=options.window,
        min_count=options.min_count,
        negative=options.negative,
        seed=options.seed,
        workers=options.workers,
    )
    model.build_vocab(sentences)
    if not len(model.wv):
        raise DataError(
            f"no word occurs --min-count {options.min_count} times in {words:,} words; lower --min-count"
        )
    model.train(sentences, total_examples=len(sentences), epochs=options.epochs)
    seconds = time.perf_counter() - start
    save_vectors(model.wv, out)
    return {
        "out": str(out),
        "kind": options.kind,
        "algorithm": "skip-gram" if options.sg else "cbow",
        "vocab": len(model.wv),
        "dim": options.dim,
        "sentences": len(sentences),
        "words": words,
        "seconds": round(seconds, 1),
    }


def save_vectors(kv, path: str | os.PathLike) -> Path:
    """Write vectors atomically in word2vec format: binary when `path` ends in .bin, else text."""
    path = Path(path)
    with staged(path, folder=False) as tmp:
        kv.save_word2vec_format(str(tmp), binary=path.suffix.lower() == ".bin")
    return path


def _sniff(path: Path) -> tuple[bool, bool]:
    """(binary, has a header line) of a vectors file: word2vec text and binary start with "count dim"; GloVe's
    text format has no header; a binary file's first vector is raw bytes, not dim numbers on a line."""
    with open(path, "rb") as fh:
        first = fh.readline(1 << 16)
        second = fh.readline(1 << 20)
    try:
        head = first.decode("utf-8").split()
    except UnicodeDecodeError:
        raise DataError(
            f"{path} is not a word2vec or GloVe vectors file (its first line is not text)"
        ) from None
    if len(head) == 2 and all(x.isdigit() for x in head):
        try:
            fields = second.decode("utf-8").split()
            [float(x) for x in fields[1:]]
        except (UnicodeDecodeError, ValueError):
            return True, True
        return len(fields) != int(head[1]) + 1, True
    return False, False


def load_vectors(path: str | os.PathLike):
    """A gensim KeyedVectors from a word2vec text or binary file or a GloVe text file (no header), detected from
    the content; malformed files raise one DataError line."""
    p = Path(path)
    if p.is_dir():
        raise DataError(
            f"{path} is a folder; give a word-vectors file (word2vec text or binary, or GloVe text)"
        )
    if not p.is_file():
        raise DataError(f"{path} does not exist; give a word-vectors file (word2vec or GloVe format)")
    gensim = gensim_module()
    binary, header = _sniff(p)
    try:
        kv = gensim.models.KeyedVectors.load_word2vec_format(
            str(p), binary=binary, no_header=not header, unicode_errors="replace"
        )
    except (ValueError, EOFError, UnicodeDecodeError, IndexError, KeyError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:100]
        raise DataError(f"{path} is not a valid word2vec/GloVe vectors file ({reason})") from None
    if not len(kv):
        raise DataError(f"{path} holds no vectors")
    return kv


def _known(kv, word: str) -> str:
    for form in (word, word.lower()):
        if form in kv.key_to_index:
            return form
    raise DataError(f"{word!r} is not in the vectors' vocabulary ({len(kv):,} words)")


def nearest(kv, word: str, top: int = 10) -> list[tuple[str, float]]:
    """The `top` words closest to `word` by cosine similarity."""
    return [(w, float(s)) for w, s in kv.most_similar(_known(kv, word), topn=top)]


def parse_analogy(expr: str) -> tuple[list[str], list[str]]:
    """ "king - man + woman" -> (["king", "woman"], ["man"]): words added and subtracted."""
    positive, negative, sign = [], [], "+"
    for (
        tok
    ) in expr.split():  # "+" and "-" stand alone or start a word: "king - man + woman", "king -man +woman"
        if tok in ("+", "-"):
            sign = tok
            continue
        if tok[0] in "+-":
            sign, tok = tok[0], tok[1:]
        (positive if sign == "+" else negative).append(tok)
        sign = "+"
    if not positive or len(positive) + len(negative) < 2:
        raise ConfigError(f'--analogy wants words joined by + and -, e.g. "king - man + woman", got {expr!r}')
    return positive, negative


def analogy(kv, expr: str, top: int = 10) -> list[tuple[str, float]]:
    """3CosAdd (Mikolov et al. 2013): the words nearest to the sum of the + words minus the - words."""
    positive, negative = parse_analogy(expr)
    pos, neg = [_known(kv, w) for w in positive], [_known(kv, w) for w in negative]
    return [(w, float(s)) for w, s in kv.most_similar(positive=pos, negative=neg, topn=top)]


BUILTIN_ANALOGIES = ("en",)  # src/lmforge/data/analogies/NAME.txt


def read_analogies(spec: str | os.PathLike) -> list[tuple[str, list[str]]]:
    """(section, [a, b, c, d]) questions of an analogy file in the Google format (`: section` lines, then one
    "a b c d" question per line: a is to b as c is to d; # starts a comment), or of a built-in set ("en")."""
    if str(spec) in BUILTIN_ANALOGIES:
        text = (
            resources.files("lmforge.data").joinpath("analogies", f"{spec}.txt").read_text(encoding="utf-8")
        )
    else:
        if not Path(spec).is_file():
            raise DataError(f"{spec} does not exist; give an analogy file in the Google format, or 'en'")
        try:
            text = Path(spec).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{spec} is not UTF-8 text") from None
    questions, section = [], None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(":"):
            section = line[1:].strip()
            continue
        words = line.lower().split()
        if len(words) != 4 or section is None:
            raise DataError(
                f"{spec}:{n} is not a question 'a b c d' under a ': section' line (Google format)"
            )
        questions.append((section, words))
    if not questions:
        raise DataError(f"{spec} holds no analogy questions")
    return questions


def evaluate_analogies(kv, spec: str | os.PathLike) -> dict:
    """Accuracy (3CosAdd, the question words excluded from the answers, as in word2vec's compute-accuracy) on an
    analogy file or built-in set; questions with a word outside the vectors are skipped and counted."""
    questions = read_analogies(spec)
    index = kv.key_to_index
    kept = [(sec, q) for sec, q in questions if all(w in index for w in q)]
    per: dict[str, dict] = {}
    for sec, _ in questions:
        per.setdefault(sec, {"correct": 0, "total": 0})
    if kept:
        unit = kv.get_normed_vectors()
        ids = np.array([[index[w] for w in q] for _, q in kept])
        target = unit[ids[:, 1]] - unit[ids[:, 0]] + unit[ids[:, 2]]
        sims = target @ unit.T
        rows = np.arange(len(kept))[:, None]
        sims[rows, ids[:, :3]] = -np.inf
        hits = sims.argmax(1) == ids[:, 3]
        for (sec, _), hit in zip(kept, hits):
            per[sec]["total"] += 1
            per[sec]["correct"] += int(hit)
    for v in per.values():
        v["accuracy"] = v["correct"] / v["total"] if v["total"] else None
    correct = sum(v["correct"] for v in per.values())
    return {
        "accuracy": correct / len(kept) if kept else None,
        "answered": len(kept),
        "questions": len(questions),
        "skipped": len(questions) - len(kept),
        "sections": per,
    }


def evaluate_similarity(kv, path: str | os.PathLike) -> dict:
    """Pearson and Spearman correlation with human scores on a "word1<TAB>word2<TAB>score" file (WordSim-353,
    SimLex-999 style; # starts a comment); pairs with an unknown word are skipped and counted."""
    if not Path(path).is_file():
        raise DataError(f"{path} does not exist; give a word-pair file: word1<TAB>word2<TAB>score")
    try:
        pearson, spearman, oov = kv.evaluate_word_pairs(
            str(path), restrict_vocab=len(kv), case_insensitive=True
        )
    except (ValueError, ZeroDivisionError) as exc:
        raise DataError(f"{path} is not a word-pair file with scores ({exc})") from None
    return {"pearson": float(pearson[0]), "spearman": float(spearman[0]), "oov_percent": float(oov)}


def embedding_rows(kv, vocab: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(matrix (len(vocab), dim) float32, found (bool per row)) for a model's vocabulary in id order: each token's
    vector, else the vector of the same word in another case (the most frequent casing the vectors list first, as
    word2vec and GloVe files do); rows not found are zero, for the caller to keep its own initialisation."""
    matrix = np.zeros((len(vocab), kv.vector_size), dtype=np.float32)
    found = np.zeros(len(vocab), dtype=bool)
    folded: dict[str, int] = {}
    for j, key in enumerate(kv.index_to_key):
        folded.setdefault(str(key).lower(), j)
    for i, token in enumerate(vocab):
        if not token:
            continue
        j = kv.key_to_index.get(token)
        j = folded.get(token.lower()) if j is None else j
        if j is not None:
            matrix[i], found[i] = kv.vectors[j], True
    return matrix, found
