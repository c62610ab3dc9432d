"""lmforge.pipeline's tasks that need an LM (lm.py): text-generation, fill-mask, feature-extraction, translation
and summarization, with transformers' call signatures and output keys, on tiny random checkpoints."""

import dataclasses

import pytest
import torch

import lmforge
from lmforge.checkpoint import save_checkpoint
from lmforge.errors import ConfigError
from lmforge.models.registry import build_model
from lmforge.tokenizers import Tokenizer


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipelines")
    texts = ["the cat sat on the mat", "a dog ran in the park"] * 20
    tok = Tokenizer.train("wordpiece", texts, vocab_size=120, min_frequency=1)
    out = {}
    for arch in ("bert", "gpt", "seq2seq"):
        torch.manual_seed(0)
        model = build_model(
            arch, dict(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=tok.vocab_size)
        )
        out[arch] = save_checkpoint(
            folder / arch, model, tok, {"arch": arch, "model": dataclasses.asdict(model.config)}
        )
    return out


def test_text_generation(ckpts):
    lm = lmforge.load(ckpts["gpt"], device="cpu")
    gen = lmforge.pipeline("text-generation", lm)
    (one,) = gen("the cat", max_new_tokens=5)
    assert one == {"generated_text": "the cat" + lm.generate("the cat", max_new_tokens=5)}
    assert (
        gen("the cat", max_new_tokens=5, return_full_text=False)[0]["generated_text"]
        == one["generated_text"][7:]
    )
    many = gen(["the cat", "a dog"], max_new_tokens=3, do_sample=True, num_return_sequences=2, seed=0)
    assert [len(x) for x in many] == [2, 2] and all(set(d) == {"generated_text"} for x in many for d in x)


def test_fill_mask_and_feature_extraction(ckpts):
    fill = lmforge.pipeline("fill-mask", ckpts["bert"], top_k=3)
    guesses = fill("the cat <|mask|> on the mat")
    assert len(guesses) == 3 and set(guesses[0]) == {"score", "token", "token_str", "sequence"}
    assert guesses[0]["score"] >= guesses[1]["score"] >= guesses[2]["score"]
    assert guesses[0]["sequence"].startswith("the cat") and guesses[0]["token_str"] in guesses[0]["sequence"]
    lm = lmforge.load(ckpts["bert"], device="cpu")
    assert [(t, pytest.approx(p)) for t, p in lm.fill_mask("the cat <|mask|> on the mat", 3)[0]] == [
        (g["token_str"], g["score"]) for g in guesses
    ]
    two = fill("<|mask|> cat <|mask|>", top_k=2)
    assert len(two) == 2 and all(len(g) == 2 for g in two)
    for arch, framed in (("bert", 4), ("gpt", 3)):  # [bos] the cat [eos] / the cat [eos]
        features = lmforge.pipeline("feature-extraction", ckpts[arch])("the cat")
        assert len(features) == 1 and len(features[0]) == framed and len(features[0][0]) == 16
    with pytest.raises(ConfigError, match="fill_mask needs a masked-LM"):
        lmforge.pipeline("fill-mask", ckpts["gpt"])("the <|mask|>")


def test_translation_summarization_and_the_task_list(ckpts):
    lm = lmforge.load(ckpts["seq2seq"], device="cpu")
    out = lmforge.pipeline("translation_en_to_fr", lm)(["the cat", "a dog"], max_new_tokens=4)
    assert [set(o) for o in out] == [{"translation_text"}] * 2 and "<|" not in out[0]["translation_text"]
    summary = lmforge.pipeline("summarization", lm)("the cat sat", max_new_tokens=3, num_beams=2)
    assert list(summary[0]) == ["summary_text"]
    with pytest.raises(ConfigError, match="text-generation"):
        lmforge.pipeline("nonsense", ckpts["gpt"])
