import pytest
import torch

import lmforge
from lmforge.errors import ConfigError
from lmforge.generate.sampling import SamplingParams, generate_tokens, next_token
from lmforge.models.registry import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("gpt", dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()


def run(model, prompt, use_cache, seed=None, **kw):
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    params = SamplingParams(**kw)
    return torch.stack(list(generate_tokens(model, prompt, params, gen, use_cache)), dim=1)


@pytest.mark.parametrize(
    "kw", [dict(temperature=0), dict(temperature=1.0, top_k=10), dict(temperature=0.9, top_p=0.8)]
)
def test_cached_and_uncached_decoding_give_the_same_tokens(model, kw):
    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(1))
    a = run(model, prompt, True, seed=3, max_new_tokens=25, **kw)
    b = run(model, prompt, False, seed=3, max_new_tokens=25, **kw)
    assert torch.equal(a, b)


def test_generation_past_the_block_size_keeps_going(model):
    out = run(model, torch.zeros(1, 4, dtype=torch.long), True, max_new_tokens=80, temperature=0)
    assert out.shape == (1, 80)


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    seen = torch.zeros(4, 1, dtype=torch.long)
    greedy = next_token(logits, seen, SamplingParams(temperature=0), None)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(next_token(logits, seen, SamplingParams(temperature=1.0, top_k=1), g), greedy)
    assert torch.equal(next_token(logits, seen, SamplingParams(temperature=1.0, top_p=1e-6), g), greedy)
    # Below float32's smallest number top_p compares as 0: the most likely token must still stay (it drew an id
    # one past the vocabulary, an IndexError in the model, before).
    assert torch.equal(next_token(logits, seen, SamplingParams(temperature=1.0, top_p=1e-300), g), greedy)


def test_top_k_never_samples_outside_the_k_best():
    logits = torch.randn(1, 100, generator=torch.Generator().manual_seed(0)).repeat(500, 1)
    allowed = set(torch.topk(logits[0], 5).indices.tolist())
    picks = next_token(
        logits, torch.zeros(500, 1, dtype=torch.long), SamplingParams(top_k=5), torch.Generator()
    )
    assert set(picks.tolist()) <= allowed and len(set(picks.tolist())) > 1


def test_sampling_draws_each_token_at_its_probability_and_never_an_impossible_one():
    from lmforge.generate.sampling import sample

    probs = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0]).repeat(100_000, 1)
    drawn = sample(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(drawn, minlength=5) / len(drawn)
    assert torch.allclose(freq, probs[0], atol=0.006)  # ~4 standard errors
    assert freq[1] == 0 and freq[4] == 0


def test_the_largest_uniform_number_still_draws_a_possible_token(monkeypatch):
    from lmforge.generate import sampling

    probs = torch.tensor([[0.25, 0.7499, 0.0, 0.0]])  # rows need not sum to 1 (float32 softmax sums do not)
    monkeypatch.setattr(sampling.torch, "rand", lambda *a, **kw: torch.full((1, 1), 1 - 2**-24))
    assert sampling.sample(probs).tolist() == [1]


def test_repetition_penalty_discourages_seen_tokens():
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    seen = torch.tensor([[0]])
    assert next_token(logits, seen, SamplingParams(temperature=0), None).item() == 0
    assert next_token(logits, seen, SamplingParams(temperature=0, repetition_penalty=1.5), None).item() == 1


@pytest.fixture(scope="module")
def trained_lm(char_data, tmp_path_factory):
    from tests.conftest import TINY

    run = tmp_path_factory.mktemp("gen") / "run"
    lmforge.pretrain(char_data, run, overrides=TINY, max_steps=120, progress=False)
    return lmforge.load(run)


def test_lm_generate_stream_seed_and_stop(trained_lm):
    lm = trained_lm
    text = lm.generate("alice ", max_new_tokens=40, temperature=0)
    assert "".join(lm.generate("alice ", max_new_tokens=40, temperature=0, stream=True)) == text
    # Within the context window (prompt + new tokens <= block_size 32) the cache changes nothing.
    short = lm.generate("alice ", max_new_tokens=20, temperature=0)
    assert lm.generate("alice ", max_new_tokens=20, temperature=0, use_cache=False) == short
    a = lm.generate("bob ", max_new_tokens=30, temperature=1.0, seed=7)
    assert a == lm.generate("bob ", max_new_tokens=30, temperature=1.0, seed=7)
    stopped = lm.generate("alice ", max_new_tokens=40, temperature=0, stop=" at")
    assert " at" not in stopped and text.startswith(stopped)
    batch = lm.generate(["alice ", "bob "], max_new_tokens=40, temperature=0)
    assert batch[0] == text and batch[1] == lm.generate("bob ", max_new_tokens=40, temperature=0)


def test_lm_generate_rejects_bad_arguments(trained_lm):
    with pytest.raises(ConfigError, match="temperature"):
        trained_lm.generate("a", temperature=-1)
    with pytest.raises(ConfigError, match="top_p"):
        trained_lm.generate("a", top_p=1.5)
    with pytest.raises(ConfigError, match="context"):
        trained_lm.generate("alice " * 50)
