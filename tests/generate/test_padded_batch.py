"""Prompts of different lengths decoded together, left-padded: each row continues exactly as it would alone."""

from __future__ import annotations

import pytest
import torch

from lmforge.generate.sampling import SamplingParams, generate_tokens
from lmforge.models.gpt import GPT, GPTConfig

STYLES = {
    "gpt2": {},
    "llama": {"norm": "rmsnorm", "activation": "swiglu", "position": "rope", "bias": False, "n_kv_head": 2},
}


def sharp_gpt(style: str) -> GPT:
    """A random GPT whose next-token choices are far apart, so greedy decoding is not decided by rounding."""
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=32, **STYLES[style])
    ).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    return model


def left_padded(prompts: list[list[int]], pad: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    x = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts])
    return x, mask


def decode(model, x, steps, use_cache=True, mask=None, temperature=0.0, repetition_penalty=1.0):
    params = SamplingParams(
        max_new_tokens=steps, temperature=temperature, repetition_penalty=repetition_penalty
    )
    gen = torch.Generator().manual_seed(0)
    return torch.stack(list(generate_tokens(model, x, params, gen, use_cache, prompt_mask=mask)), dim=1)


PROMPTS = [[3, 9, 4], [11, 2, 8, 30, 5, 17, 6], [21], [1, 40, 12, 19]]


@pytest.mark.parametrize("style", sorted(STYLES))
@pytest.mark.parametrize("use_cache", [True, False])
def test_left_padded_rows_decode_as_they_would_alone(style, use_cache):
    model = sharp_gpt(style)
    x, mask = left_padded(PROMPTS)
    batch = decode(model, x, 20, use_cache, mask, repetition_penalty=1.3)
    for row, prompt in zip(batch, PROMPTS):
        alone = decode(model, torch.tensor([prompt]), 20, use_cache, repetition_penalty=1.3)[0]
        assert row.tolist() == alone.tolist()


@pytest.mark.parametrize("style", sorted(STYLES))
def test_padding_changes_nothing_in_the_logits_of_real_tokens(style):
    model = sharp_gpt(style)
    x, mask = left_padded(PROMPTS)
    with torch.no_grad():
        padded = model(x, key_mask=mask)
        for r, prompt in enumerate(PROMPTS):
            alone = model(torch.tensor([prompt]))[0]
            torch.testing.assert_close(padded[r, -len(prompt) :], alone, atol=1e-4, rtol=1e-4)
        assert torch.isfinite(padded).all()  # padding queries attend to themselves, never to nothing


def test_without_the_mask_padding_would_leak_into_the_rows():
    """The tests above can fail: without the mask, the padded rows' logits change."""
    model = sharp_gpt("gpt2")
    x, _ = left_padded(PROMPTS)
    with torch.no_grad():
        unmasked = model(x)
        for r, prompt in enumerate(PROMPTS):
            alone = model(torch.tensor([prompt]))[0]
            leaked = (unmasked[r, -len(prompt) :] - alone).abs().max().item()
            assert leaked > 1e-2 if len(prompt) < x.shape[1] else leaked < 1e-4


def test_lm_generate_batches_prompts_of_different_lengths():
    """LM.generate(list) decodes one padded batch (one forward per step) with the same text as one at a time."""
    from lmforge.lm import LM
    from lmforge.tokenizers import Tokenizer

    tok = Tokenizer.train("char", ["the quick brown fox jumps over the lazy dog.,!?"] * 3)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=32)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    lm = LM(model, tok, {"arch": "gpt"})
    prompts = ["a", "the lazy dog", "fox"]
    alone = [lm.generate(p, max_new_tokens=12, temperature=0) for p in prompts]
    batch_sizes = []
    model.register_forward_pre_hook(lambda m, args: batch_sizes.append(args[0].shape[0]))
    assert lm.generate(prompts, max_new_tokens=12, temperature=0) == alone
    assert batch_sizes and set(batch_sizes) == {len(prompts)}
