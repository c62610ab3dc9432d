"""A statistical n-gram language model with interpolated modified Kneser-Ney smoothing, counted with numpy.

Sentences
    A token stream is a sequence of sentences (or documents), each ended by the eos id. The model reads each one as
    KenLM does, as ``<s> w1 ... wn </s>``: ``</s>`` is the eos id and is predicted, ``<s>`` is only ever context and
    has probability 0. The bos id may equal the eos id (tokenizers with a single separator). A bos id inside a stream
    starts a sentence and is not scored; a context is read from the start of a sentence (``<s>`` is implied before
    its first token), so `score(x)` is the sum of `logprob(x[:i], x[i])` over the scored positions.

Smoothing (Chen & Goodman 1998; KenLM's lmplz computes the same)
    Adjusted counts a(g): the raw count at the highest order and for n-grams that begin with ``<s>``, otherwise the
    number of distinct words seen to the left of g. Per order, discounts D1, D2, D3+ from the count-of-counts n1..n4
    of the adjusted counts: Y = n1 / (n1 + 2 n2), Dj = j - (j + 1) Y n(j+1) / nj. Then

        p(w | h) = (a(hw) - D(a(hw))) / a(h.) + gamma(h) p(w | h'),    gamma(h) = sum_w D(a(hw)) / a(h.)

    where h' is h without its first word and a(h.) sums a(hw) over w; a context h never seen is skipped,
    p(w | h) = p(w | h'). The unigram level is interpolated with the uniform distribution over the ids that can be
    predicted (all but a bos id distinct from eos; KenLM's treatment of <unk>), so each of them has non-zero
    probability and ids never seen in training (<unk> when the data has none, pad, mask) get the uniform share. On word-level benchmarks such as PTB, <unk> is
    an ordinary word of the data and is counted like any other.

Storage (the model in its ARPA form)
    Per order k, the seen k-grams sorted, each as the int64 key `row of its first k-1 words in the order k-1 table
    * (V + 1) + last word` (a trie in flat arrays; the keys fit in 64 bits whatever the order), with its interpolated
    log p(w | h) and, below the highest order, the log of gamma as its backoff weight. Scoring is then ARPA back-off
    arithmetic over binary searches (np.searchsorted), which is exactly the interpolated model. Logs are natural
    logs; the ARPA file holds log10.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from lmforge.errors import CheckpointError, ConfigError, DataError, TokenizerError
from lmforge.models.arpa import META_PREFIX, read_arpa, write_arpa

FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # KenLM's --discount_fallback default
LN10 = math.log(10.0)
SCORE_CHUNK = 1 << 20  # positions scored per vectorised step (bounds the memory of `score`)
ARPA_UNK_LOG10 = -100.0  # what KenLM gives words of an ARPA file without <unk>


def modified_kn_discounts(adjusted_counts: np.ndarray) -> tuple[np.ndarray, bool]:
    """(D1, D2, D3+) from the count-of-counts of `adjusted_counts` (Chen & Goodman eq. 26) and whether the fallback
    (0.5, 1, 1.5) had to replace them: no n-gram with adjusted count 1, 2 or 3, or a discount outside (0, j]."""
    a = np.asarray(adjusted_counts, dtype=np.int64)
    n = np.bincount(a[(a >= 1) & (a <= 4)], minlength=5).astype(np.float64)
    if n[1] and n[2] and n[3]:
        y = n[1] / (n[1] + 2 * n[2])
        d = np.array([j - (j + 1) * y * n[j + 1] / n[j] for j in (1, 2, 3)])
        if np.all((d > 0) & (d <= np.array([1.0, 2.0, 3.0]))):
            return d, False
    return np.array(FALLBACK_DISCOUNTS), True


class NGramLM:
    """An n-gram model over token ids 0..vocab_size-1. Build it with `fit`, `from_arpa` or `from_state_dict`."""

    def __init__(
        self,
        order: int,
        vocab_size: int,
        bos_id: int,
        eos_id: int,
        unk_id: int | None,
        logprobs: list[np.ndarray],
        backoffs: list[np.ndarray],
        keys: list[np.ndarray],
        discounts: np.ndarray | None = None,
    ):
        _check_config(order, vocab_size, bos_id, eos_id, unk_id)
        self.order, self.vocab_size = int(order), int(vocab_size)
        self.bos_id, self.eos_id = int(bos_id), int(eos_id)
        self.unk_id = None if unk_id is None else int(unk_id)
        self._start = self.vocab_size  # the internal id of <s>; n-gram keys use base vocab_size + 1
        self._base = self.vocab_size + 1
        # Index k - 1 holds order k. Order 1 is dense over the internal ids 0..V (its key is the id itself).
        self._logp = [np.asarray(a, dtype=np.float64) for a in logprobs]
        self._bo = [np.asarray(a, dtype=np.float64) for a in backoffs]
        self._keys = [np.arange(self._base, dtype=np.int64)] + [np.asarray(a, dtype=np.int64) for a in keys]
        nan = np.full((self.order, 3), np.nan)
        self.discounts: np.ndarray = nan if discounts is None else np.asarray(discounts, dtype=np.float64)
        self.fallback_orders: list[int] = []  # orders whose discounts are the fallback (set by `fit`)

    # ----------------------------------------------------------------------------------------------------- building

    @classmethod
    def fit(
        cls,
        tokens: np.ndarray | Iterable[np.ndarray],
        order: int,
        vocab_size: int,
        bos_id: int,
        eos_id: int,
        unk_id: int | None = None,
    ) -> NGramLM:
        """Count the n-grams of an eos-separated stream (one array or several, read as one stream) and smooth them."""
        _check_config(order, vocab_size, bos_id, eos_id, unk_id)
        model = cls(order, vocab_size, bos_id, eos_id, unk_id, [], [], [])
        padded = model._pad(_stream(tokens))
        if not np.any(padded != model._start):
            raise DataError("there are no tokens to fit the n-gram model on")
        keys, adjusted, suffixes = _count(padded, order, model._base, model._start)
        model._smooth(keys, adjusted, suffixes)
        return model

    def _smooth(
        self, keys: list[np.ndarray], adjusted: list[np.ndarray], suffixes: list[np.ndarray | None]
    ) -> None:
        """Interpolated modified Kneser-Ney probabilities and backoff weights from adjusted counts, lowest order up."""
        base, order = self._base, self.order
        discounts = np.zeros((order, 3))
        self.fallback_orders = []
        self._logp, self._bo, self._keys = [], [], keys

        def discount_of(a: np.ndarray, k: int) -> np.ndarray:
            d, fell_back = modified_kn_discounts(a)
            discounts[k - 1] = d
            if fell_back:
                self.fallback_orders.append(k)
            return np.concatenate(([0.0], d))[np.minimum(a, 3)]

        predictable = self._predictable()
        a = np.where(predictable, adjusted[0], 0)
        disc = discount_of(a[a > 0], 1)
        disc_all = np.zeros(base)
        disc_all[a > 0] = disc
        total = a.sum()
        prob = np.where(predictable, (a - disc_all) / total + disc_all.sum() / total / predictable.sum(), 0.0)
        with np.errstate(divide="ignore"):
            self._logp.append(np.log(prob))
        for k in range(2, order + 1):
            a, ctx = adjusted[k - 1], keys[k - 1] // base
            disc = discount_of(a, k)
            rows = keys[k - 2].size
            denom = np.bincount(ctx, weights=a, minlength=rows)
            gamma = np.divide(
                np.bincount(ctx, weights=disc, minlength=rows), denom, out=np.zeros(rows), where=denom > 0
            )
            prob = (a - disc) / denom[ctx] + gamma[ctx] * prob[suffixes[k - 1]]
            self._logp.append(np.log(prob))
            self._bo.append(np.log(gamma, out=np.zeros(rows), where=denom > 0))
        self.discounts = discounts
        if self.fallback_orders:
            orders = ", ".join(map(str, self.fallback_orders))
            warnings.warn(
                f"too little data to estimate the Kneser-Ney discounts of order(s) {orders}; "
                f"using the fallback discounts {FALLBACK_DISCOUNTS} there (as KenLM's --discount_fallback)",
                stacklevel=3,
            )

    # ------------------------------------------------------------------------------------------------------ scoring

    def logprob(self, context: Sequence[int], token: int) -> float:
        """Natural log of p(token | context); the context is read from a sentence start (see the module notes)."""
        history = self._history(context)
        token = int(self._ids([token])[0])
        if token == self.bos_id != self.eos_id:
            return -math.inf
        backoff = 0.0
        for m in range(len(history), -1, -1):  # m = length of the context tried, longest first
            row = self._row(history[len(history) - m :] + [token])
            if row >= 0:
                return float(self._logp[m][row] + backoff)
            ctx = self._row(history[len(history) - m :])
            if ctx >= 0:
                backoff += self._bo[m - 1][ctx]
        raise AssertionError("unreachable: every id has a unigram")

    def next_logprobs(self, context: Sequence[int]) -> np.ndarray:
        """Natural logs of p(w | context) for every id w of the vocabulary, shape (vocab_size,)."""
        history, base = self._history(context), self._base
        dist = self._logp[0].copy()
        for length in range(1, len(history) + 1):
            ctx = self._row(history[-length:])
            if ctx < 0:
                continue
            dist += self._bo[length - 1][ctx]
            keys = self._keys[length]
            lo, hi = np.searchsorted(keys, [ctx * base, (ctx + 1) * base])
            dist[keys[lo:hi] % base] = self._logp[length][lo:hi]
        return dist[: self.vocab_size]

    def score(self, tokens: np.ndarray | Iterable[np.ndarray]) -> tuple[float, int]:
        """(total negative log-likelihood in nats, number of tokens predicted) of an eos-separated stream.

        Every token is predicted, eos included; bos ids are not (they only start sentences).
        Perplexity is exp(nats / tokens).
        """
        padded = self._pad(_stream(tokens))
        total, count, reach = 0.0, 0, self.order - 1
        for begin in range(0, padded.size, SCORE_CHUNK):
            lo = max(0, begin - reach)
            part = padded[lo : begin + SCORE_CHUNK]
            logp = self._position_logprobs(part)[begin - lo :]
            scored = part[begin - lo :] != self._start
            total += float(logp[scored].sum())
            count += int(scored.sum())
        return -total, count

    def _position_logprobs(self, padded: np.ndarray) -> np.ndarray:
        """log p of every position of a padded stream given what precedes it (garbage at <s> positions)."""
        base, n = self._base, padded.size
        x = padded.astype(np.int64)
        # rows[k - 1][j]: row of the k-gram ending at position j in the order-k table, or -1 if not in the model
        rows = [x]
        for k in range(2, self.order + 1):
            prev, keys = rows[-1], self._keys[k - 1]
            found = np.full(n, -1, dtype=np.int64)
            j = np.flatnonzero(prev[:-1] >= 0) + 1
            j = j[x[j] != self._start]
            if j.size and keys.size:
                query = prev[j - 1] * base + x[j]
                pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
                hit = keys[pos] == query
                found[j[hit]] = pos[hit]
            rows.append(found)
        out = self._logp[0][x]
        longest = np.ones(n, dtype=np.int64)
        for k in range(2, self.order + 1):
            hit = rows[k - 1] >= 0
            out[hit] = self._logp[k - 1][rows[k - 1][hit]]
            longest[hit] = k
        # back-off weights of the contexts longer than the longest n-gram found (contexts end at j - 1)
        for length in range(1, self.order):
            ctx = np.full(n, -1, dtype=np.int64)
            ctx[1:] = rows[length - 1][:-1]
            add = (ctx >= 0) & (longest <= length)
            out[add] += self._bo[length - 1][ctx[add]]
        return out

    # ------------------------------------------------------------------------------------------------------ helpers

    def _predictable(self) -> np.ndarray:
        """Which internal ids (0..V, V being <s>) can be predicted: all but <s> and a bos id distinct from eos."""
        mask = np.ones(self._base, dtype=bool)
        mask[self._start] = False
        mask[self.bos_id] = self.bos_id == self.eos_id
        return mask

    def _ids(self, tokens) -> np.ndarray:
        """`tokens` as an integer array (its own dtype, not copied), checked against the vocabulary."""
        x = np.asarray(tokens).ravel()
        if x.size == 0:
            return x.astype(np.int64)
        if x.dtype.kind not in "iu":
            raise DataError(f"token ids must be integers, got an array of {x.dtype}")
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= self.vocab_size:
            bad = lo if lo < 0 else hi
            raise DataError(
                f"token id {bad} is not in the vocabulary 0..{self.vocab_size - 1} of this n-gram model"
            )
        return x

    def _pad(self, tokens) -> np.ndarray:
        """The stream with <s> (internal id V) before every sentence: at the start, after each eos, for each bos.

        bos ids themselves are dropped; a trailing <s> marks a stream that ends with a boundary. int32 (V < 2**31).
        """
        x = self._ids(tokens)
        trailing_bos = False
        starts = np.zeros(x.size, dtype=bool)
        if self.bos_id != self.eos_id:
            is_bos = x == self.bos_id
            bos_before = np.cumsum(is_bos)[~is_bos]  # number of bos ids before each kept token
            starts = np.diff(bos_before, prepend=0) > 0
            trailing_bos = bool(is_bos.size and is_bos[-1])
            x = x[~is_bos]
        if x.size == 0:
            return np.array([self._start], dtype=np.int32)
        starts[0] = True
        starts[1:] |= x[:-1] == self.eos_id
        trailing = trailing_bos or x[-1] == self.eos_id
        where = np.arange(x.size) + np.cumsum(starts)
        out = np.full(x.size + int(starts.sum()) + int(trailing), self._start, dtype=np.int32)
        out[where] = x
        return out

    def _history(self, context: Sequence[int]) -> list[int]:
        """The internal ids of the last order - 1 words of `context` that the model conditions on."""
        reach = self.order - 1
        if reach == 0:
            return []
        tail = self._ids(context[-reach:]).tolist()
        boundary = [i for i, t in enumerate(tail) if t == self.eos_id or t == self.bos_id]
        if boundary:
            return [self._start] + tail[boundary[-1] + 1 :]
        return ([self._start] if len(context) < reach else []) + tail

    def _row(self, ngram: list[int]) -> int:
        """The row of an n-gram (internal ids) in the table of its order, or -1 when the model does not have it."""
        row = ngram[0]
        for k in range(1, len(ngram)):
            keys = self._keys[k]
            query = row * self._base + ngram[k]
            pos = int(np.searchsorted(keys, query))
            if pos == keys.size or keys[pos] != query:
                return -1
            row = pos
        return int(row)

    @property
    def num_ngrams(self) -> list[int]:
        """How many n-grams the model stores per order (order 1: the whole vocabulary and <s>)."""
        return [int(lp.size) for lp in self._logp]

    def __repr__(self) -> str:
        return f"NGramLM(order={self.order}, vocab_size={self.vocab_size}, ngrams={self.num_ngrams})"

    # ---------------------------------------------------------------------------------------------------- state I/O

    @property
    def config(self) -> dict:
        return {
            "order": self.order,
            "vocab_size": self.vocab_size,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "unk_id": self.unk_id,
        }

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat arrays (for model.safetensors); `config` holds the rest (for config.json)."""
        state = {"discounts": self.discounts.copy()}
        for k in range(1, self.order + 1):
            state[f"logprob.{k}"] = self._logp[k - 1]
            if k < self.order:
                state[f"backoff.{k}"] = self._bo[k - 1]
            if k > 1:
                state[f"keys.{k}"] = self._keys[k - 1]
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray], config: dict) -> NGramLM:
        missing = {"order", "vocab_size", "bos_id", "eos_id"} - set(config)
        if missing:
            raise ConfigError(f"the n-gram model config lacks {', '.join(sorted(missing))}")
        order = config["order"]
        _check_config(order, config["vocab_size"], config["bos_id"], config["eos_id"], config.get("unk_id"))

        def get(name: str) -> np.ndarray:
            if name not in state:
                raise CheckpointError(
                    f"the n-gram model state has no {name!r} array; the checkpoint is incomplete"
                )
            return np.asarray(state[name])

        logp = [get(f"logprob.{k}") for k in range(1, order + 1)]
        bo = [get(f"backoff.{k}") for k in range(1, order)]
        keys = [get(f"keys.{k}") for k in range(2, order + 1)]
        base = config["vocab_size"] + 1
        sizes_ok = logp[0].shape == (base,) and all(b.shape == lp.shape for b, lp in zip(bo, logp))
        sizes_ok &= all(kk.shape == lp.shape for kk, lp in zip(keys, logp[1:]))
        if not sizes_ok:
            raise CheckpointError(
                "the n-gram model arrays do not match each other or the config; the checkpoint is corrupted"
            )
        return cls(
            order,
            config["vocab_size"],
            config["bos_id"],
            config["eos_id"],
            config.get("unk_id"),
            logp,
            bo,
            keys,
            state.get("discounts"),
        )

    # --------------------------------------------------------------------------------------------------------- ARPA

    def _arpa_unigrams(self, id_to_token: Callable[[int], str]) -> tuple[list[str], np.ndarray]:
        """The ARPA word of every internal id (<s>, </s> and <unk> for the special ids, as KenLM names them) and the
        internal ids of the unigram lines in file order: ids 0..V-1, the bos slot holding <s>, or <s> last if bos is eos.
        """
        names = [str(id_to_token(i)) for i in range(self.vocab_size)] + ["<s>"]
        names[self.eos_id] = "</s>"
        if self.unk_id is not None:
            names[self.unk_id] = "<unk>"
        lines = np.arange(self._base)
        if self.bos_id != self.eos_id:
            names[self.bos_id] = "<s>"
            lines = lines[: self.vocab_size]
            lines[self.bos_id] = self._start
        seen: dict[str, int] = {}
        for i in lines:
            name = names[i]
            if not name or name.split() != [name]:
                raise TokenizerError(
                    f"token {name!r} (id {i}) is empty or contains whitespace, which ARPA cannot represent; "
                    f"give to_arpa an id_to_token that maps it to a printable name"
                )
            if name in seen:
                raise TokenizerError(
                    f"ids {seen[name]} and {i} are both written as {name!r}; ARPA words must be unique"
                )
            seen[name] = i
        return names, lines

    def to_arpa(self, path: str | os.PathLike, id_to_token: Callable[[int], str]) -> None:
        """Write the model as ARPA (log10). Unigrams are listed in id order, every id of the vocabulary included.

        eos is written as </s>, bos as <s> and unk as <unk>, the names KenLM and SRILM give them; a comment line
        before \\data\\ records the ids so that `from_arpa` restores them.
        """
        names, unigrams = self._arpa_unigrams(id_to_token)
        base = self._base
        backoff = self._bo[0][unigrams] / LN10 if self.order > 1 else None
        orders = [([names[i] for i in unigrams], self._logp[0][unigrams] / LN10, backoff)]
        text = np.array(names, dtype=object)  # the words of each row of the previous order, space-joined
        for k in range(2, self.order + 1):
            keys = self._keys[k - 1]
            text = text[keys // base] + " " + np.array(names, dtype=object)[keys % base]
            backoff = self._bo[k - 1] / LN10 if k < self.order else None
            orders.append((text.tolist(), self._logp[k - 1] / LN10, backoff))
        meta = {
            "order": self.order,
            "vocab_size": self.vocab_size,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "unk_id": "none" if self.unk_id is None else self.unk_id,
        }
        write_arpa(path, orders, meta)

    @classmethod
    def from_arpa(
        cls, path: str | os.PathLike, token_to_id: Callable[[str], int | None] | None = None
    ) -> NGramLM:
        """Load an ARPA file (ours, KenLM's or SRILM's).

        Without `token_to_id`, the i-th unigram of the file gets id i (the order `to_arpa` writes, so ids round-trip);
        <s> shares the id of </s> when lmforge's comment line says so. With `token_to_id`, each word maps to the id
        it returns; <s>, </s> and <unk> may map to None and then take their ids from the comment line (<s> otherwise
        shares </s>). Ids that the file does not list get the probability of <unk>, as in KenLM.
        """
        name = os.fspath(path)
        meta, words, sections = read_arpa(path)
        header = _parse_meta(meta, name)
        first_line = sections[0].lines

        # the id of each unigram line (-1: a special word that the vocabulary does not have)
        line_ids = np.full(len(words), -1, dtype=np.int64)
        role_ids: dict[str, int | None] = {"<s>": None, "</s>": None, "<unk>": None}
        shared_bos = header.get("bos_id", -1) == header.get("eos_id")
        next_id = 0
        for row, word in enumerate(words):
            if token_to_id is None:
                i = header["eos_id"] if word == "<s>" and shared_bos else next_id
                next_id += not (word == "<s>" and shared_bos)
            else:
                i = token_to_id(word)
                if i is None and word in role_ids:
                    i = header.get({"<s>": "bos_id", "</s>": "eos_id", "<unk>": "unk_id"}[word])
                if i is None and word not in ("<s>", "<unk>"):
                    raise DataError(
                        f"{name}, line {first_line[row]}: the word {word!r} is not in the vocabulary "
                        f"(token_to_id gave no id)"
                    )
            if word in role_ids:
                role_ids[word] = i
            line_ids[row] = -1 if i is None else int(i)
        bos, eos, unk = role_ids["<s>"], role_ids["</s>"], role_ids["<unk>"]
        if eos is None:
            raise DataError(f"{name} has no </s> unigram; an n-gram model needs the end-of-sentence word")
        bos = eos if bos is None else bos
        vocab_size = header.get("vocab_size", int(line_ids.max()) + 1)
        for key, value in (("bos_id", bos), ("eos_id", eos), ("unk_id", unk)):
            if key in header and value is not None and header[key] != value:
                raise DataError(
                    f"{name}: its comment line says {key}={header[key]} but its unigrams give {value}"
                )
        if line_ids.max() >= vocab_size:
            row = int(np.argmax(line_ids))
            raise DataError(
                f"{name}: the word {words[row]!r} has id {line_ids[row]}, outside the vocabulary size "
                f"{vocab_size} of its comment line"
            )
        order = len(sections)
        if header.get("order", order) != order:
            raise DataError(
                f"{name}: its comment line says order={header['order']} but it has {order} sections"
            )
        model = cls(order, vocab_size, bos, eos, unk, [], [], [])
        start, base = model._start, model._base
        internal = np.where(np.array(words) == "<s>", start, line_ids) if words else line_ids

        uni = sections[0]
        unk_log10 = uni.logprob10[words.index("<unk>")] if "<unk>" in words else ARPA_UNK_LOG10
        logp1 = np.full(base, unk_log10 * LN10)
        bo1 = np.zeros(base)
        known = internal >= 0
        logp1[internal[known]] = uni.logprob10[known] * LN10
        bo1[internal[known]] = uni.backoff10[known] * LN10
        logp1[~model._predictable()] = -np.inf
        logps, backoffs, keys = [logp1], [bo1], [model._keys[0]]
        for k in range(2, order + 1):
            sec = sections[k - 1]
            ngram = internal[sec.ids]
            keep = np.all(
                ngram >= 0, axis=1
            )  # n-grams with a word outside the vocabulary can never be asked for
            ngram, lines = ngram[keep], sec.lines[keep]
            row = ngram[:, 0]
            for j in range(1, k - 1):  # walk the prefix down the tables of orders 2..k-1
                query = row * base + ngram[:, j]
                pos = np.minimum(np.searchsorted(keys[j], query), max(keys[j].size - 1, 0))
                ok = keys[j][pos] == query if keys[j].size else np.zeros(query.size, dtype=bool)
                if not ok.all():
                    bad = int(np.flatnonzero(~ok)[0])
                    prefix = " ".join(words[i] for i in sec.ids[keep][bad, : k - 1])
                    raise DataError(
                        f"{name}, line {lines[bad]}: the {k}-gram's prefix {prefix!r} is not listed "
                        f"among the {k - 1}-grams"
                    )
                row = pos
            key = row * base + ngram[:, k - 1]
            perm = np.argsort(key, kind="stable")
            key = key[perm]
            dup = np.flatnonzero(key[1:] == key[:-1])
            if dup.size:
                raise DataError(f"{name}, line {lines[perm[dup[0] + 1]]}: this {k}-gram is listed twice")
            keys.append(key)
            logps.append(sec.logprob10[keep][perm] * LN10)
            if k < order:
                backoffs.append(sec.backoff10[keep][perm] * LN10)
        return cls(order, vocab_size, bos, eos, unk, logps, backoffs[: order - 1], keys[1:])


# -------------------------------------------------------------------------------------------------------- counting


def _count(padded: np.ndarray, order: int, base: int, start: int):
    """Sorted n-gram keys, adjusted counts and suffix rows of every order, from a padded stream.

    Order k is counted from order k-1: the key of the k-gram at position i is (row of the (k-1)-gram at i) * base +
    word at i + k - 1, so one np.unique per order gives the sorted table, counts and each position's row. A window
    is a k-gram if it has no <s> after its first word. The suffix (words 2..k) of each k-gram is the (k-1)-gram
    one position later; counting distinct k-grams per suffix gives the continuation counts of order k-1.
    """
    n = padded.size
    raw = [np.bincount(padded, minlength=base)]
    first_is_start = [np.arange(base) == start]
    keys, adjusted, suffixes = [np.arange(base, dtype=np.int64)], [raw[0]], [None]
    rows = padded  # rows[i]: row of the (k-1)-gram at position i in its table (-1: none); order 1: the id
    at = np.arange(n, dtype=np.int64)  # positions where a (k-1)-gram starts
    for k in range(2, order + 1):
        at = at[at <= n - k]
        at = at[
            padded[at + k - 1] != start
        ]  # the (k-1)-gram at `at` has no inner <s>; its next word must not be one
        query = rows[at].astype(np.int64) * base + padded[at + k - 1]
        table, inverse, count = np.unique(query, return_inverse=True, return_counts=True)
        del query
        first = np.empty(table.size, dtype=np.int64)
        first[inverse] = at  # some position of each k-gram
        suffix = rows[first + 1].astype(np.int64)
        continuation = np.bincount(suffix, minlength=keys[-1].size)
        adjusted[-1] = np.where(first_is_start[-1], raw[-1], continuation)
        keys.append(table)
        raw.append(count)
        adjusted.append(count)
        suffixes.append(suffix)
        first_is_start.append(padded[first] == start)
        rows = np.full(n, -1, dtype=np.int32 if table.size < 2**31 else np.int64)
        rows[at] = inverse
        del inverse, first
    return keys, adjusted, suffixes


def _stream(tokens: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
    """One array of ids from an array or an iterable of arrays (e.g. `TokenShards(...).arrays`), read as one stream."""
    if isinstance(tokens, np.ndarray):
        return tokens
    if isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], (int, np.integer)):
        return np.asarray(tokens)
    parts = [np.asarray(a).ravel() for a in tokens]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _check_config(order, vocab_size, bos_id, eos_id, unk_id) -> None:
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
        raise ConfigError(f"the n-gram order must be an integer of at least 1, got {order!r}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
        raise ConfigError(f"the n-gram vocab_size must be a positive integer, got {vocab_size!r}")
    for role, value in (("bos_id", bos_id), ("eos_id", eos_id), ("unk_id", unk_id)):
        if value is None and role == "unk_id":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < vocab_size:
            raise ConfigError(f"the n-gram {role} must be an id in 0..{vocab_size - 1}, got {value!r}")


def _parse_meta(meta: dict[str, str], name: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in ("order", "vocab_size", "bos_id", "eos_id", "unk_id"):
        if key in meta and meta[key] != "none":
            try:
                out[key] = int(meta[key])
            except ValueError:
                raise DataError(
                    f"{name}: its {META_PREFIX!r} comment has {key}={meta[key]!r}, not an integer"
                ) from None
    return out
