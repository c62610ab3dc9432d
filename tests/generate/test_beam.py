"""Beam search for the encoder-decoder: a beam of one is greedy decoding, scores are what they claim to be, the
n-gram ban holds, and the cache follows reselected beams."""

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.generate.beam import BeamParams, beam_search
from lmforge.generate.sampling import SamplingParams
from lmforge.generate.transduce import decode_tokens
from lmforge.models.seq2seq import Seq2Seq, Seq2SeqConfig

START, EOS = 2, 3


def tiny(seed=0) -> Seq2Seq:
    """A random model whose outputs vary and sometimes end: an untrained model with shared embeddings only repeats
    its start token, so the head is separate, sharper, and has a bias towards end-of-sequence."""
    torch.manual_seed(seed)
    cfg = Seq2SeqConfig(
        vocab_size=30, block_size=24, n_layer=2, n_head=2, n_embd=32, dropout=0.0, share_embeddings=False
    )
    return with_sharp_head(Seq2Seq(cfg).eval(), scale=3, eos_bias=5.0)


def with_sharp_head(model, scale: float, eos_bias: float):
    """`model` with its output layer replaced by a copy `scale` times sharper, biased towards end-of-sequence."""
    head = torch.nn.Linear(32, 30)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight * scale)
        head.bias.zero_()
        head.bias[EOS] = eos_bias
    model.lm_head = head
    return model


def sources():
    torch.manual_seed(1)
    src = torch.randint(5, 30, (4, 9))
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, 5:] = mask[3, 7:] = False
    return src, mask


def greedy(model, src, mask, n) -> list[list[int]]:
    steps = torch.stack(list(decode_tokens(model, src, mask, START, SamplingParams(n, temperature=0.0))), 1)
    out = []
    for row in steps.tolist():
        out.append(row[: row.index(EOS)] if EOS in row else row)
    return out


def teacher_forced_logprob(model, src, mask, tokens: list[int], finished: bool) -> float:
    target = tokens + [EOS] * finished
    tgt_in = torch.tensor([[START, *target[:-1]]])
    with torch.no_grad():
        logp = model(src[None], tgt_in, mask[None])[0].float().log_softmax(-1)
    return float(logp[torch.arange(len(target)), torch.tensor(target)].sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_beam_of_one_is_greedy_decoding(seed):
    model = tiny(seed)
    src, mask = sources()
    beams = beam_search(model, src, mask, START, EOS, BeamParams(num_beams=1, max_new_tokens=20))
    expected = greedy(model, src, mask, 20)
    assert [hyps[0].tokens for hyps in beams] == expected
    assert [hyps[0].finished for hyps in beams] == [len(t) < 20 for t in expected]


@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.6])
def test_beams_are_sorted_and_scores_are_teacher_forced_logprobs_over_length(alpha):
    model = tiny()
    src, mask = sources()
    beams = beam_search(
        model, src, mask, START, EOS, BeamParams(num_beams=4, max_new_tokens=12, length_penalty=alpha)
    )
    assert {h.finished for hyps in beams for h in hyps} == {
        True,
        False,
    }  # both kinds of hypotheses are checked
    for b, hyps in enumerate(beams):
        assert len(hyps) == 4
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) + (h.finished,) for h in hyps}) == 4  # distinct hypotheses
        for h in hyps:
            # Recomputed from scratch: catches a cache that was not reordered with its beam.
            lp = teacher_forced_logprob(model, src[b, mask[b]], mask[b, mask[b]], h.tokens, h.finished)
            assert h.logprob == pytest.approx(lp, abs=1e-4)
            assert h.score == pytest.approx(lp / max(h.length, 1) ** alpha, abs=1e-4)
    # Beam search finds at least as likely an output as greedy decoding (at alpha 0 the score is the log-prob).
    if alpha == 0.0:
        for b, tokens in enumerate(greedy(model, src, mask, 12)):
            finished = len(tokens) < 12
            lp = teacher_forced_logprob(model, src[b, mask[b]], mask[b, mask[b]], tokens, finished)
            assert beams[b][0].score >= lp - 1e-4


def has_repeated_ngram(tokens: list[int], n: int) -> bool:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def test_no_repeat_ngram_size_prevents_repeats_and_min_new_tokens_delays_the_end():
    model = tiny()
    src, mask = sources()
    free = beam_search(
        model, src, mask, START, EOS, BeamParams(num_beams=3, max_new_tokens=20, min_new_tokens=20)
    )
    assert any(
        has_repeated_ngram(h.tokens, 2) for hyps in free for h in hyps
    )  # without the ban there are repeats
    assert all(len(h.tokens) == 20 for hyps in free for h in hyps)
    banned = beam_search(
        model,
        src,
        mask,
        START,
        EOS,
        BeamParams(num_beams=3, max_new_tokens=20, no_repeat_ngram_size=2, min_new_tokens=20),
    )
    assert not any(has_repeated_ngram(h.tokens, 2) for hyps in banned for h in hyps)


def test_bad_beam_settings_are_config_errors():
    model = tiny()
    src, mask = sources()
    with pytest.raises(ConfigError, match="num_beams"):
        beam_search(model, src, mask, START, EOS, BeamParams(num_beams=0))
    with pytest.raises(ConfigError, match="num_return_sequences"):
        beam_search(model, src, mask, START, EOS, BeamParams(num_beams=2, num_return_sequences=3))


def test_transduce_with_beams():
    from lmforge.lm import LM
    from lmforge.tokenizers import Tokenizer

    tok = Tokenizer.train("char", ["abcdefghijklmnopqrstuvwxy"])
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (START, EOS, 30)
    lm = LM(tiny(2), tok, {"arch": "seq2seq"})
    texts = ["abcde", "xyq", "hello", "mmm"]
    assert lm.transduce(texts, max_new_tokens=15, num_beams=1) == lm.transduce(texts, max_new_tokens=15)
    best = lm.transduce(texts, max_new_tokens=15, num_beams=3, num_return_sequences=3)
    assert [len(b) for b in best] == [3] * 4
    assert [b[0] for b in best] == lm.transduce(texts, max_new_tokens=15, num_beams=3)
    assert isinstance(lm.transduce("abc", max_new_tokens=5, num_beams=2), str)
    with pytest.raises(ConfigError, match="num_beams"):
        lm.transduce("abc", num_beams=0)
    with pytest.raises(ConfigError, match="num_beams"):
        lm.transduce("abc", num_return_sequences=2)


def test_without_early_stopping_the_search_goes_on_while_a_beam_can_still_win():
    model = tiny(2)
    src, mask = sources()
    early = beam_search(
        model, src, mask, START, EOS, BeamParams(num_beams=3, max_new_tokens=15, length_penalty=0.0)
    )
    full = beam_search(
        model,
        src,
        mask,
        START,
        EOS,
        BeamParams(num_beams=3, max_new_tokens=15, length_penalty=0.0, early_stopping=False),
    )
    # Without a length penalty a running beam's log-probability only falls, so the longer search is exact, never worse.
    for a, b in zip(early, full):
        assert b[0].score >= a[0].score - 1e-6


# ---- decoder-only models (a GPT continuing prompts) --------------------------------------------------------------
def tiny_gpt(seed=0):
    """A random GPT whose continuations vary and sometimes end, made like tiny() above."""
    from lmforge.models.gpt import GPT, GPTConfig

    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=30, block_size=24, n_layer=2, n_head=2, n_embd=32, tie_embeddings=False))
    return with_sharp_head(model.eval(), scale=40, eos_bias=3.0)


def prompts() -> list[list[int]]:
    """Prompts of three lengths, interleaved, so that batching them by length has to put the outputs back in order."""
    g = torch.Generator().manual_seed(3)
    lengths = [5, 9, 5, 3, 9, 5]
    return [[EOS] + torch.randint(5, 30, (n - 1,), generator=g).tolist() for n in lengths]


def gpt_greedy_one_at_a_time(model, prompt: list[int], n: int) -> list[int]:
    from lmforge.generate.sampling import generate_tokens

    out = []
    for tok in generate_tokens(model, torch.tensor([prompt]), SamplingParams(n, temperature=0.0)):
        if int(tok[0]) == EOS:
            break
        out.append(int(tok[0]))
    return out


def gpt_logprob(model, prompt: list[int], tokens: list[int], finished: bool) -> float:
    target = tokens + [EOS] * finished
    with torch.no_grad():
        logp = model(torch.tensor([prompt + target]))[0].float().log_softmax(-1)  # no cache: the reference
    at = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(target))
    return float(logp[at, torch.tensor(target)].sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_beam_of_one_is_greedy_decoding_for_a_decoder_only_model(seed):
    from lmforge.generate.beam import beam_search_prompts, continue_prompts

    model = tiny_gpt(seed)
    beams = beam_search_prompts(model, prompts(), EOS, BeamParams(num_beams=1, max_new_tokens=12))
    greedy_batched = continue_prompts(
        model, prompts(), EOS, SamplingParams(12, temperature=0.0), batch_size=2
    )
    expected = [gpt_greedy_one_at_a_time(model, p, 12) for p in prompts()]
    assert greedy_batched == expected  # batches of equal-length prompts change nothing
    assert [hyps[0].tokens for hyps in beams] == expected
    assert {len(t) for t in expected} != {12} and any(
        expected
    )  # some end early, some do not, some say something


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_decoder_only_beams_are_sorted_and_scored_as_their_teacher_forced_logprobs(alpha):
    from lmforge.generate.beam import beam_search_prompts

    model = tiny_gpt(2)
    beams = beam_search_prompts(
        model, prompts(), EOS, BeamParams(num_beams=4, max_new_tokens=10, length_penalty=alpha), batch_size=2
    )
    assert {h.finished for hyps in beams for h in hyps} == {True, False}
    for prompt, hyps in zip(prompts(), beams):
        scores = [h.score for h in hyps]
        assert len(hyps) == 4 and scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) + (h.finished,) for h in hyps}) == 4
        for h in hyps:  # recomputed without the cache: catches a cache row that did not follow its beam
            lp = gpt_logprob(model, prompt, h.tokens, h.finished)
            assert h.logprob == pytest.approx(lp, abs=1e-4)
            assert h.score == pytest.approx(lp / max(h.length, 1) ** alpha, abs=1e-4)
        if alpha == 0.0:  # at least as likely as the greedy output
            greedy = gpt_greedy_one_at_a_time(model, prompt, 10)
            assert hyps[0].score >= gpt_logprob(model, prompt, greedy, len(greedy) < 10) - 1e-4


def test_decoder_only_outputs_stop_at_the_end_of_the_context_and_long_prompts_are_one_error():
    from lmforge.generate.beam import beam_search_prompts, continue_prompts

    model = tiny_gpt()
    full = [[EOS] + [7] * 20, [EOS] + [9] * 23]  # 21 and 24 of the 24 positions
    params = BeamParams(num_beams=3, max_new_tokens=50, min_new_tokens=50)  # never ends by itself
    lengths = [len(hyps[0].tokens) for hyps in beam_search_prompts(model, full, EOS, params)]
    assert lengths == [24 + 1 - 21, 24 + 1 - 24]  # the last token needs no position of its own
    greedy = continue_prompts(model, full, None, SamplingParams(50, temperature=0.0))
    assert [len(t) for t in greedy] == [4, 1]
    too_long = [[EOS] * 25, [EOS] * 3, [EOS] * 30]
    for search in (
        lambda: beam_search_prompts(model, too_long, EOS, params),
        lambda: continue_prompts(model, too_long, EOS, SamplingParams(5)),
    ):
        with pytest.raises(
            ConfigError,
            match=r"2 of 3 prompt\(s\) are longer than the model's context of 24 tokens "
            r"\(the longest: 30\)",
        ):
            search()


def test_transduce_with_a_decoder_only_model_fine_tuned_on_pairs():
    from lmforge.lm import LM
    from lmforge.tasks.translate.prompts import PairPrompt
    from lmforge.tokenizers import Tokenizer

    tok = Tokenizer.train("char", ["abcdefghijklmnopqrstuvwx\n"])
    prompt = PairPrompt.for_tokenizer(tok)
    assert (tok.eos_id, tok.vocab_size, prompt.separator) == (
        EOS,
        30,
        "\n",
    )  # "=" and ">" are not in the vocabulary
    config = {"arch": "gpt", "data": {"pair_prompt": prompt.to_dict()}}
    lm = LM(tiny_gpt(1), tok, config)
    texts = ["abcde", "xw", "hello", "mmm", "abcdx"]
    greedy = lm.transduce(texts, max_new_tokens=10)
    assert lm.transduce(texts, max_new_tokens=10, num_beams=1) == greedy
    ids = [prompt.prompt_ids(tok, t) for t in texts]
    assert greedy == [
        tok.decode(gpt_greedy_one_at_a_time(lm.model, i, 10), skip_special_tokens=False) for i in ids
    ]
    best = lm.transduce(texts, max_new_tokens=10, num_beams=3, num_return_sequences=2)
    assert [len(b) for b in best] == [2] * 5 and [b[0] for b in best] == lm.transduce(
        texts, max_new_tokens=10, num_beams=3
    )
    with pytest.raises(ConfigError, match="1 of 2 prompt.* longer than the model's context of 24 tokens"):
        lm.transduce(["abc", "a" * 30], num_beams=2)
    with pytest.raises(ConfigError, match="neither an encoder-decoder .* nor a gpt fine-tuned"):
        LM(tiny_gpt(1), tok, {"arch": "gpt"}).transduce("abc")
