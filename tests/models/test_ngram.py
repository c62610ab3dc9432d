"""The n-gram model: interpolated modified Kneser-Ney against hand computations and a brute-force reference,
normalisation, scoring paths, ARPA and state round trips, and the errors of bad orders and bad ARPA files."""

import json
import math
import re
import warnings
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from lmforge.errors import ConfigError, DataError, TokenizerError
from lmforge.models.ngram import NGramLM

# Vocabulary of the small tests: the project's special ids first, then words.
PAD, UNK, BOS, EOS = 0, 1, 2, 3
WORDS = list(range(4, 12))
V = 12
NAMES = ["<|pad|>", "<|unk|>", "<|bos|>", "<|eos|>"] + [f"w{i}" for i in WORDS]
LN10 = math.log(10)


def random_sentences(n: int, seed: int, words=WORDS, max_len: int = 7) -> list[list[int]]:
    """Sentences from a skewed distribution with a repeated phrase, so that some long n-grams recur."""
    rng = np.random.default_rng(seed)
    p = np.array([1.0 / (r + 1) for r in range(len(words))])
    p /= p.sum()
    out = []
    for _ in range(n):
        s = [int(t) for t in rng.choice(words, size=int(rng.integers(0, max_len + 1)), p=p)]
        if rng.random() < 0.3:
            s = [words[0], words[1], words[2]] + s
        out.append(s)
    return out


def stream_of(sentences, eos=EOS) -> np.ndarray:
    return np.array([t for s in sentences for t in [*s, eos]], dtype=np.uint16)


def fit(sentences, order, bos=BOS, **kw) -> NGramLM:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny corpora fall back to KenLM's discounts at some orders
        return NGramLM.fit(stream_of(sentences), order, V, bos, EOS, **kw)


# ------------------------------------------------------------------------------- hand-computed discounts


def test_discounts_and_a_probability_match_a_hand_computed_example():
    a, b, c = 4, 5, 6
    sentences = [[a, b]] * 3 + [[a, c]] + [[b, c]] * 2 + [[c]]
    model = NGramLM.fit(stream_of(sentences), 2, 7, BOS, EOS, unk_id=UNK)
    # Bigrams (highest order: raw counts), with <s> and </s>:
    #   <s> a 4, a b 3, b </s> 3, a c 1, c </s> 4, <s> b 2, b c 2, <s> c 1
    #   n1 = 2 (a c, <s> c), n2 = 2 (<s> b, b c), n3 = 2 (a b, b </s>), n4 = 2 (<s> a, c </s>)
    #   Y = 2 / (2 + 2*2) = 1/3;  D1 = 1 - 2Y n2/n1 = 1/3,  D2 = 2 - 3Y n3/n2 = 1,  D3+ = 3 - 4Y n4/n3 = 5/3
    # Unigrams (continuation counts = distinct left neighbours, <s> included):
    #   a {<s>} 1, b {a, <s>} 2, c {a, b, <s>} 3, </s> {b, c} 2
    #   n1 = 1, n2 = 2, n3 = 1, n4 = 0;  Y = 1/5;  D1 = 1 - 2Y*2/1 = 1/5,  D2 = 2 - 3Y*1/2 = 17/10,  D3+ = 3 - 0 = 3
    expected = np.array([[1 / 5, 17 / 10, 3], [1 / 3, 1, 5 / 3]])
    np.testing.assert_allclose(model.discounts, expected, rtol=0, atol=1e-12)
    assert model.fallback_orders == []
    # p(b | a) = (3 - D3+) / 4 + gamma(a) p1(b),  gamma(a) = (D3+ + D1) / 4 = 1/2
    # p1(b) = (2 - 17/10) / 8 + gamma0 / 6,  gamma0 = (1/5 + 2*17/10 + 3) / 8 = 0.825, 6 predictable ids (not bos)
    p1_b = Fraction(3, 10) / 8 + Fraction(33, 40) / 6
    p_b_a = (3 - Fraction(5, 3)) / 4 + Fraction(1, 2) * p1_b
    assert math.isclose(model.logprob([a], b), math.log(p_b_a), abs_tol=1e-12)
    # an id never seen (pad) gets only the uniform share of the unigram level, here after <s> (a new sentence):
    # gamma(<s>) = (D3+ + D2 + D1) / (4 + 2 + 1) = 3/7 for <s> a 4, <s> b 2, <s> c 1
    assert math.isclose(
        model.logprob([a, b, EOS], PAD), math.log(Fraction(3, 7) * Fraction(33, 40) / 6), abs_tol=1e-12
    )
    assert math.isclose(model.logprob([], PAD), model.logprob([a, b, EOS], PAD))
    assert model.logprob([a], BOS) == -math.inf


def test_degenerate_count_of_counts_fall_back_to_kenlm_discounts_with_a_warning():
    # unigrams: a seen once, no word seen exactly twice -> n2 = 0, the closed form is undefined
    with pytest.warns(UserWarning, match=r"order\(s\) 1; using the fallback"):
        model = NGramLM.fit(stream_of([[4, 4, 4, 5]]), 1, V, BOS, EOS)
    assert model.fallback_orders == [1]
    np.testing.assert_array_equal(model.discounts, [[0.5, 1.0, 1.5]])


# --------------------------------------------------------------------------- brute-force reference


def brute_force_kn(sentences, order, eos, predictable):
    """Interpolated modified Kneser-Ney from the textbook definitions, with dicts and fractions."""
    start = "<s>"
    counts = [Counter() for _ in range(order + 2)]
    for s in sentences:
        padded = [start, *s, eos]
        for k in range(1, order + 1):
            for i in range(len(padded) - k + 1):
                counts[k][tuple(padded[i : i + k])] += 1
    adjusted = [None] + [Counter() for _ in range(order)]
    for k in range(1, order + 1):
        for g, c in counts[k].items():
            if k == order or g[0] == start:
                adjusted[k][g] = c
            else:
                adjusted[k][g] = len({u[0] for u in counts[k + 1] if u[1:] == g})
    del adjusted[1][(start,)]
    discounts = [None]
    for k in range(1, order + 1):
        n = Counter(adjusted[k].values())
        d = None
        if n[1] and n[2] and n[3]:
            y = Fraction(n[1], n[1] + 2 * n[2])
            d = [j - (j + 1) * y * Fraction(n[j + 1], n[j]) for j in (1, 2, 3)]
            if not all(0 < d[j - 1] <= j for j in (1, 2, 3)):
                d = None
        discounts.append(d or [Fraction(1, 2), Fraction(1), Fraction(3, 2)])

    def disc(k, a):
        return 0 if a == 0 else discounts[k][min(a, 3) - 1]

    def prob(w, h):
        if not h:
            if w not in predictable:
                return Fraction(0)
            total = sum(adjusted[1].values())
            gamma = sum(disc(1, a) for a in adjusted[1].values()) / total
            a = adjusted[1][(w,)]
            return (a - disc(1, a)) / total + gamma / len(predictable)
        k = len(h) + 1
        following = {g[-1]: a for g, a in adjusted[k].items() if g[:-1] == h}
        if not following:
            return prob(w, h[1:])
        total = sum(following.values())
        gamma = sum(disc(k, a) for a in following.values()) / total
        a = following.get(w, 0)
        return (a - disc(k, a)) / total + gamma * prob(w, h[1:])

    return prob, start


@pytest.mark.parametrize("bos", [BOS, EOS], ids=["bos-distinct", "bos-is-eos"])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_matches_a_brute_force_reference(order, bos):
    sentences = random_sentences(40, seed=order, words=WORDS[:5], max_len=5)
    model = fit(sentences, order, bos=bos)
    predictable = {i for i in range(V) if i != bos or bos == EOS}
    prob, start = brute_force_kn(sentences, order, EOS, predictable)
    rng = np.random.default_rng(1)
    cases = []  # (model context, reference history)
    for s in sentences[:8]:
        for i in range(len(s) + 1):
            cases.append((s[:i], ((start, *s[:i]))[-(order - 1) :] if order > 1 else ()))
    for _ in range(10):  # contexts that do not start a sentence: only their last order - 1 words count
        ctx = [int(t) for t in rng.choice(WORDS[:5] + [PAD], size=order + 1)]
        cases.append(([EOS, *ctx], tuple(ctx[-(order - 1) :]) if order > 1 else ()))
    for ctx, hist in cases:
        got = model.next_logprobs(ctx)
        want = np.array([float(prob(w, hist)) for w in range(V)])
        with np.errstate(divide="ignore"):
            np.testing.assert_allclose(got, np.log(want), rtol=0, atol=1e-10, err_msg=f"context {ctx}")


# ------------------------------------------------------------------------------------- normalisation


def sampled_contexts(sentences, order, rng) -> list[list[int]]:
    seen = [s[:i] for s in sentences[:10] for i in range(len(s) + 1)]  # seen, from a sentence start
    unseen = [[int(t) for t in rng.choice(V, size=int(rng.integers(1, 7)))] for _ in range(15)]
    partly = [s[: len(s) // 2] + [int(rng.choice(WORDS))] for s in sentences[10:25]]
    after_start = [[], [EOS], [4, 5, EOS], [BOS], [4, 5, EOS, BOS]]
    mid = [[4, 5, 6, 7, 8, 4, 5, 6][: order + 2], [9, 9, 9, 9, 9, 9]]
    return seen + unseen + partly + after_start + mid


@pytest.mark.parametrize("bos", [BOS, EOS], ids=["bos-distinct", "bos-is-eos"])
@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_probabilities_over_the_vocabulary_sum_to_one(order, bos):
    sentences = random_sentences(300, seed=10 + order)
    model = fit(sentences, order, bos=bos)
    rng = np.random.default_rng(order)
    for ctx in sampled_contexts(sentences, order, rng):
        logp = model.next_logprobs(ctx)
        assert logp.shape == (V,)
        assert abs(np.exp(logp).sum() - 1.0) < 1e-6, ctx
        positive = np.exp(logp) > 0
        assert positive.sum() == (V - 1 if bos != EOS else V), ctx  # everything but a distinct bos
        assert logp[EOS] > -np.inf and (bos == EOS or logp[bos] == -np.inf)


@pytest.mark.parametrize("bos", [BOS, EOS], ids=["bos-distinct", "bos-is-eos"])
def test_vectorised_score_equals_the_sum_of_scalar_logprobs(bos, monkeypatch):
    sentences = random_sentences(200, seed=3)
    model = fit(sentences, 4, bos=bos)
    held_out = stream_of(random_sentences(30, seed=99))
    held_out = np.concatenate([[BOS], held_out[:50], [BOS], held_out[50:]]) if bos != EOS else held_out
    monkeypatch.setattr("lmforge.models.ngram.SCORE_CHUNK", 37)  # chunk boundaries fall inside sentences
    nats, count = model.score(held_out)
    expected = -sum(
        model.logprob(held_out[:i], int(t)) for i, t in enumerate(held_out) if t != bos or bos == EOS
    )
    assert count == int(np.sum(held_out != bos)) if bos != EOS else count == held_out.size
    assert math.isclose(nats, expected, rel_tol=1e-12)
    for i in (0, 5, 17, 60):
        assert math.isclose(
            model.next_logprobs(held_out[:i])[held_out[i]], model.logprob(held_out[:i], held_out[i])
        )


def test_out_of_vocabulary_ids_and_empty_data_are_data_errors():
    model = fit(random_sentences(20, seed=0), 2)
    with pytest.raises(DataError, match=r"token id 12 is not in the vocabulary 0\.\.11"):
        model.score(np.array([4, 12, EOS]))
    with pytest.raises(DataError, match="no tokens"):
        NGramLM.fit(np.array([], dtype=np.uint16), 2, V, BOS, EOS)


# ------------------------------------------------------------------------------------------- bad order


@pytest.mark.parametrize("order", [0, -3, 2.5])
def test_an_order_below_one_is_a_config_error(order):
    with pytest.raises(ConfigError, match=r"order must be an integer of at least 1") as err:
        NGramLM.fit(stream_of([[4, 5]]), order, V, BOS, EOS)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="order"):
        NGramLM.from_state_dict({}, {"order": order, "vocab_size": V, "bos_id": BOS, "eos_id": EOS})


# ----------------------------------------------------------------------------------------------- ARPA


def arpa_sections(text: str) -> tuple[dict[int, int], dict[int, list[str]]]:
    """The header counts and the entry lines of each section, read independently of the library."""
    header = {int(k): int(n) for k, n in re.findall(r"^ngram (\d+)=(\d+)$", text, flags=re.M)}
    sections: dict[int, list[str]] = {}
    current = None
    for line in text.splitlines():
        m = re.fullmatch(r"\\(\d+)-grams:", line)
        if m:
            current = int(m.group(1))
            sections[current] = []
        elif line == "\\end\\":
            current = None
        elif current is not None and line.strip():
            sections[current].append(line)
    return header, sections


@pytest.mark.parametrize("bos", [BOS, EOS], ids=["bos-distinct", "bos-is-eos"])
@pytest.mark.parametrize("order", [1, 3, 5])
def test_arpa_round_trip_preserves_scores(tmp_path, order, bos):
    sentences = random_sentences(300, seed=20 + order)
    model = fit(sentences, order, bos=bos, unk_id=UNK)
    path = tmp_path / "lm.arpa"
    model.to_arpa(path, NAMES.__getitem__)
    text = path.read_text(encoding="utf-8")

    header, sections = arpa_sections(text)
    assert sorted(header) == list(range(1, order + 1))
    assert {k: len(v) for k, v in sections.items()} == header
    assert header[1] == V + (bos == EOS)  # every id, and <s> as an extra word when bos is eos
    words = [line.split("\t")[1] for line in sections[1]]
    assert {"<s>", "</s>", "<unk>", "<|pad|>"} <= set(words) and "<|eos|>" not in words
    assert "-99\t<s>" in text

    held_out = stream_of(random_sentences(40, seed=7))
    nats, count = model.score(held_out)
    loaded = {
        "file order": NGramLM.from_arpa(path),
        "token_to_id": NGramLM.from_arpa(path, {n: i for i, n in enumerate(NAMES)}.get),
    }
    for how, back in loaded.items():
        assert back.config == model.config, how
        nats2, count2 = back.score(held_out)
        assert count2 == count
        assert abs(nats2 - nats) / LN10 < 1e-5 * count, how
        for ctx in sampled_contexts(sentences, order, np.random.default_rng(0)):
            with np.errstate(invalid="ignore"):
                diff = np.abs(back.next_logprobs(ctx) - model.next_logprobs(ctx))
            assert np.nanmax(diff) / LN10 < 1e-5, (how, ctx)
    again = tmp_path / "again.arpa"
    loaded["file order"].to_arpa(again, NAMES.__getitem__)
    assert again.read_text(encoding="utf-8") == text


KENLM_STYLE = """\\data\\
ngram 1=4
ngram 2=2

\\1-grams:
-1.0\t<unk>\t0
-99\t<s>\t-0.5
-0.5\t</s>
-0.3\ta\t-0.2

\\2-grams:
-0.1\t<s> a
-0.2\ta </s>

\\end\\
"""


def test_an_arpa_file_without_our_comment_line_is_read_with_back_off_semantics(tmp_path):
    path = tmp_path / "kenlm.arpa"
    path.write_text(KENLM_STYLE, encoding="utf-8")
    model = NGramLM.from_arpa(path)
    unk, bos, eos, a = 0, 1, 2, 3  # file order
    assert model.config == {"order": 2, "vocab_size": 4, "bos_id": bos, "eos_id": eos, "unk_id": unk}
    cases = [
        ([], a, -0.1),  # <s> a is listed
        ([a], eos, -0.2),  # a </s> is listed
        ([a], a, -0.2 - 0.3),  # backoff(a) + p(a)
        ([], eos, -0.5 - 0.5),  # backoff(<s>) + p(</s>)
        ([a], unk, -0.2 - 1.0),
        ([], bos, -math.inf),  # <s> is never predicted
    ]
    for ctx, token, log10 in cases:
        assert math.isclose(model.logprob(ctx, token), log10 * LN10, abs_tol=1e-12), (ctx, token)
        assert math.isclose(model.next_logprobs(ctx)[token], log10 * LN10, abs_tol=1e-12), (ctx, token)
    nats, count = model.score(np.array([a, eos, a, a, eos]))
    assert count == 5 and math.isclose(-nats, (-0.1 - 0.2 - 0.1 - 0.5 - 0.2) * LN10)


def test_tokens_that_arpa_cannot_spell_are_refused(tmp_path):
    model = fit(random_sentences(20, seed=0), 2)
    with pytest.raises(TokenizerError, match=r"token ' ' \(id 4\) is empty or contains whitespace"):
        model.to_arpa(tmp_path / "x.arpa", lambda i: " " if i == 4 else NAMES[i])
    with pytest.raises(TokenizerError, match=r"ids 4 and 5 are both written as 'w'"):
        model.to_arpa(tmp_path / "x.arpa", lambda i: "w" if i in (4, 5) else NAMES[i])


@pytest.fixture
def arpa_lines(tmp_path):
    model = fit(random_sentences(50, seed=1), 2, unk_id=UNK)
    path = tmp_path / "good.arpa"
    model.to_arpa(path, NAMES.__getitem__)
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def corrupt(lines, path, edit):
    lines = list(lines)
    edit(lines)
    path.write_text("".join(lines), encoding="utf-8")
    return path


def find(lines, text):
    return next(i for i, line in enumerate(lines) if line.startswith(text))


def bad_header(lines):
    lines[find(lines, "ngram 2=")] = "ngram 2=many\n"


def truncated_section(lines):
    del lines[find(lines, "\\2-grams:") + 5 :]


def non_numeric_prob(lines):
    i = find(lines, "\\2-grams:") + 3
    lines[i] = "abc" + lines[i][lines[i].index("\t") :]


def short_section(lines):
    i = find(lines, "\\2-grams:")
    del lines[i - 4 : i - 1]  # three unigrams fewer than the header announces


def no_end(lines):
    del lines[-1]


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            bad_header,
            r"line 5: expected a count line 'ngram N=COUNT' in the \\data\\ header, found 'ngram 2=many'",
        ),
        (
            truncated_section,
            r"truncated: it ends after 4 of the \d+ entries that the header announces for \\2-grams:",
        ),
        (non_numeric_prob, r"line \d+: 'abc' is not a number \(a log10 probability or backoff of a 2-gram\)"),
        (short_section, r"line \d+: \\1-grams: has 9 entries but the header announces 12"),
        (no_end, r"truncated: it ends without the \\end\\ line"),
        (lambda lines: lines.clear(), r"is not an ARPA file: it has no \\data\\ line"),
    ],
    ids=["bad-header", "truncated-section", "non-numeric-prob", "short-section", "no-end", "empty"],
)
def test_malformed_arpa_is_a_data_error_naming_the_line(arpa_lines, tmp_path, edit, message):
    path = corrupt(arpa_lines, tmp_path / "bad.arpa", edit)
    with pytest.raises(DataError, match=message) as err:
        NGramLM.from_arpa(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------- state dict


def test_state_dict_round_trip_through_safetensors(tmp_path):
    from safetensors.numpy import load_file, save_file

    model = fit(random_sentences(200, seed=5), 3, unk_id=UNK)
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(model.config))
    back = NGramLM.from_state_dict(
        load_file(str(tmp_path / "model.safetensors")), json.loads((tmp_path / "config.json").read_text())
    )
    held_out = stream_of(random_sentences(20, seed=6))
    assert back.score(held_out) == model.score(held_out)
    np.testing.assert_array_equal(back.discounts, model.discounts)


# -------------------------------------------------------------------------------------------- sanity


def markov_sentences(n: int, seed: int) -> list[list[int]]:
    """Sentences from a fixed sparse second-order Markov source over the words (the source is seed 0's)."""
    source = np.random.default_rng(0)
    table = {
        (a, b): source.choice(WORDS + [EOS], size=3, replace=False)
        for a in [BOS, *WORDS]
        for b in [BOS, *WORDS]
    }
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b, s = BOS, BOS, []
        while len(s) < 20:
            nxt = int(rng.choice(table[(a, b)], p=[0.6, 0.3, 0.1]))
            if nxt == EOS:
                break
            s.append(nxt)
            a, b = b, nxt
        out.append(s)
    return out


def perplexity(model, tokens) -> float:
    nats, count = model.score(tokens)
    return math.exp(nats / count)


def test_more_data_lowers_perplexity_and_context_beats_the_unigram():
    held_out = stream_of(markov_sentences(300, seed=2))
    small, large = markov_sentences(100, seed=3), markov_sentences(3000, seed=4)
    assert perplexity(fit(large, 3), held_out) < 0.9 * perplexity(fit(small, 3), held_out)
    train = stream_of(large)
    trigram, unigram = perplexity(fit(large, 3), train), perplexity(fit(large, 1), train)
    assert trigram < 0.6 * unigram
