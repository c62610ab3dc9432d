"""LM.generate with transformers' option names and meanings (generate/config.py), checked against transformers'
own generate on the same weights, and `lmforge generate`'s new flags."""

import json

import pytest
import torch

import lmforge
from lmforge.errors import ConfigError
from lmforge.generate.config import GenerationConfig, default_generation
from tests.conftest import TINY


@pytest.fixture(scope="module")
def lm(char_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("hfgen") / "run"
    lmforge.pretrain(char_data, run, overrides={**TINY, "model.block_size": 48}, max_steps=40, progress=False)
    return lmforge.load(run, device="cpu")


def test_greedy_is_the_default_and_sampling_needs_asking(lm):
    greedy = lm.generate("alice ", max_new_tokens=20)
    assert greedy == lm.generate("alice ", max_new_tokens=20, temperature=0)
    assert greedy == lm.generate("alice ", max_new_tokens=20, do_sample=False, temperature=1.5)  # ignored
    # lmforge's older spelling: a temperature without do_sample samples.
    a = lm.generate("alice ", max_new_tokens=20, temperature=1.0, seed=1)
    assert a == lm.generate("alice ", max_new_tokens=20, do_sample=True, temperature=1.0, seed=1)
    samples = lm.generate("alice ", max_new_tokens=20, do_sample=True, num_return_sequences=4, seed=0)
    assert isinstance(samples, list) and len(samples) == 4 and len(set(samples)) > 1
    both = lm.generate(["alice ", "bob "], max_new_tokens=8, do_sample=True, num_return_sequences=2, seed=0)
    assert [len(x) for x in both] == [2, 2]


def test_lengths_stops_and_end_ids(lm):
    n_prompt = len(lm.prompt_ids("alice "))
    by_length = lm.generate("alice ", max_length=n_prompt + 7, eos_token_id=[10_000])
    assert by_length == lm.generate("alice ", max_new_tokens=7, eos_token_id=[10_000])
    assert lm.generate("alice ", max_length=n_prompt + 30, max_new_tokens=3) == lm.generate(
        "alice ", max_new_tokens=3
    )  # max_new_tokens wins, as in transformers
    full = lm.generate("alice ", max_new_tokens=20)
    first = full[2]
    ended = lm.generate("alice ", max_new_tokens=20, eos_token_id=lm.tokenizer.encode(first))
    assert ended == full[: full.index(first)]
    stop = full[3:5]
    assert lm.generate("alice ", max_new_tokens=20, stop_strings=stop) == full[: full.index(stop)]
    with pytest.raises(ConfigError, match="max_length"):
        lm.generate("alice ", max_length=2)


def test_no_repeat_ngram_and_repetition_penalty(lm):
    text = lm.generate("alice sees bob", max_new_tokens=40, no_repeat_ngram_size=2)
    ids = lm.prompt_ids("alice sees bob") + lm.tokenizer.encode(text)
    pairs = list(zip(ids, ids[1:]))
    assert len(pairs) == len(set(pairs))  # no bigram twice, the prompt's included
    with pytest.raises(ConfigError, match="repetition_penalty"):
        lm.generate("alice ", repetition_penalty=0)


def test_unknown_and_bad_options_are_clear_errors(lm):
    with pytest.raises(TypeError, match="unknown generation option 'num_beam'"):
        lm.generate("alice ", num_beam=2)
    with pytest.raises(ConfigError, match="num_return_sequences"):
        lm.generate("alice ", num_return_sequences=2)  # greedy has one answer
    with pytest.raises(ConfigError, match="num_return_sequences"):
        lm.generate("alice ", num_beams=2, num_return_sequences=3)
    with pytest.raises(ConfigError, match="stream"):
        lm.generate("alice ", num_beams=2, stream=True)
    with pytest.raises(ConfigError, match="top_p"):
        lm.generate("alice ", do_sample=True, top_p=2)


def test_beam_search_matches_transformers(lm, tmp_path):
    """The same weights exported to transformers: its beam search picks the same continuation."""
    transformers = pytest.importorskip("transformers")
    from lmforge.export.hf import export_hf

    hf = transformers.AutoModelForCausalLM.from_pretrained(export_hf(lm.path, tmp_path / "hf")).eval()
    eos = lm.tokenizer.eos_id
    for prompt in ["alice ", "carol helps d"]:
        ids = lm.prompt_ids(prompt)
        for beams, penalty in [(3, 1.0), (4, 0.0)]:
            theirs = hf.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                num_beams=beams,
                num_return_sequences=2,
                max_new_tokens=12,
                do_sample=False,
                length_penalty=penalty,
                early_stopping=True,
                eos_token_id=eos,
                pad_token_id=eos,
            )
            expected = [
                lm.tokenizer.decode([t for t in row[len(ids) :].tolist() if t != eos]) for row in theirs
            ]
            mine = lm.generate(
                prompt, num_beams=beams, num_return_sequences=2, max_new_tokens=12, length_penalty=penalty
            )
            assert mine == expected
    assert lm.generate("alice ", num_beams=1, max_new_tokens=10) == lm.generate("alice ", max_new_tokens=10)


def test_stored_defaults_are_hf_generation_config_fields(lm, tmp_path):
    transformers = pytest.importorskip("transformers")
    stored = default_generation(lm.tokenizer)
    assert stored["do_sample"] is False and stored["eos_token_id"] == lm.tokenizer.eos_id
    hf = transformers.GenerationConfig(**stored)  # every key is one of transformers' fields
    assert hf.num_beams == 1 and hf.max_new_tokens == 100 and hf.top_k == 0
    unknown = set(stored) - set(transformers.GenerationConfig().to_dict())
    assert not unknown
    # A checkpoint's own defaults are used, and the call's options win over them.
    lm.config["generation"] = {**stored, "max_new_tokens": 5, "transformers_version": "4.0"}
    try:
        assert lm.generation_config.max_new_tokens == 5
        assert len(lm.tokenizer.encode(lm.generate("alice "))) <= 5
        assert lm.generate("alice ", max_new_tokens=9) == lm.generate(
            "alice ", generation_config={"max_new_tokens": 9}
        )
        saved = lmforge.load(lm.save_pretrained(tmp_path / "saved"))
        assert saved.config["generation"]["max_new_tokens"] == 5
    finally:
        del lm.config["generation"]
    assert GenerationConfig.from_checkpoint({}).max_new_tokens == 100
    fresh = lmforge.load(lm.save_pretrained(tmp_path / "fresh"))
    assert fresh.config["generation"] == stored


def test_cli_beam_search_and_sequences(lm, capsys):
    from lmforge.cli.main import main

    # fp32 as the Python API's default: the CLI's --dtype auto is bf16 on CPUs with bf16 units, whose greedy text
    # may differ from fp32's
    args = ["generate", str(lm.path), "--prompt", "alice ", "--max-new-tokens", "8", "--dtype", "fp32"]
    assert main([*args, "--num-beams", "3", "--num-return-sequences", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["completion"] == lm.generate(
        "alice ", num_beams=3, num_return_sequences=2, max_new_tokens=8
    )
    assert main([*args, "--no-do-sample", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["completion"] == lm.generate("alice ", max_new_tokens=8)
    assert main([*args, "--num-beams", "2", "--num-return-sequences", "3"]) != 0
    assert "num_return_sequences" in capsys.readouterr().err
