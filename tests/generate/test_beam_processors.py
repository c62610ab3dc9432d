"""Beam search with transformers' logits processors (generate/beam.py): the repetition penalty and the no-repeat
n-gram ban over the prompt (or the decoder's start token) and the output, equal to transformers' beam search on the
same weights (a decoder-only model and a Marian encoder-decoder), and beam-search multinomial sampling (do_sample
with num_beams > 1): seeded, and tending to plain beam search as the temperature goes to zero."""

import json

import pytest
import torch

from lmforge.cli.main import main
from lmforge.errors import ConfigError
from lmforge.generate.beam import BeamParams, beam_search, processed
from tests.generate.test_hf_generation import lm  # noqa: F401 (a fixture)

transformers = pytest.importorskip("transformers")


def test_processors_are_transformers_own():
    from transformers.generation.logits_process import (
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
    )

    torch.manual_seed(0)
    logp = torch.randn(3, 12).log_softmax(-1)
    seen = [[1, 2, 3, 1, 2], [4, 4, 5, 6, 7], [0, 1, 0, 1, 0]]
    params = BeamParams(num_beams=3, repetition_penalty=1.7, no_repeat_ngram_size=2)
    ids = torch.tensor(seen)
    want = NoRepeatNGramLogitsProcessor(2)(ids, RepetitionPenaltyLogitsProcessor(1.7)(ids, logp.clone()))
    assert torch.equal(processed(logp.clone(), seen, 5, 11, params), want)


def test_decoder_only_beams_with_penalties_equal_transformers(lm, tmp_path):  # noqa: F811
    from lmforge.export.hf import export_hf

    hf = transformers.AutoModelForCausalLM.from_pretrained(export_hf(lm.path, tmp_path / "hf")).eval()
    eos = lm.tokenizer.eos_id
    for prompt in ["alice sees bob", "carol helps d"]:
        ids = lm.prompt_ids(prompt)
        for options in (
            {"repetition_penalty": 1.8},
            {"no_repeat_ngram_size": 2},
            {"repetition_penalty": 0.7},
        ):
            theirs = hf.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                num_beams=3,
                num_return_sequences=2,
                max_new_tokens=14,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=eos,
                **options,
            )
            expected = [
                lm.tokenizer.decode([t for t in row[len(ids) :].tolist() if t != eos]) for row in theirs
            ]
            mine = lm.generate(prompt, num_beams=3, num_return_sequences=2, max_new_tokens=14, **options)
            assert mine == expected, options
        # the ban covers the prompt: no bigram of prompt + output twice
        out = lm.prompt_ids(prompt) + lm.tokenizer.encode(
            lm.generate(prompt, num_beams=3, max_new_tokens=20, no_repeat_ngram_size=2)
        )
        pairs = list(zip(out, out[1:]))
        assert len(pairs) == len(set(pairs))


def test_encoder_decoder_beams_with_penalties_equal_transformers(tmp_path):
    pytest.importorskip("sentencepiece")
    from lmforge.export.hf import import_hf
    from lmforge.lm import load
    from tests.export.hf_models import source_batch
    from tests.export.test_hf_seq2seq import SOURCES, hf_seq2seq

    hf, _ = hf_seq2seq("marian", tmp_path / "marian")
    ours = load(import_hf(tmp_path / "marian", tmp_path / "ours"))
    eos = ours.tokenizer.eos_id
    src, mask = source_batch(ours.tokenizer, SOURCES, suffix=[eos])
    start = hf.config.decoder_start_token_id
    for options in ({"repetition_penalty": 2.0}, {"no_repeat_ngram_size": 2, "repetition_penalty": 1.3}):
        with torch.no_grad():
            theirs = hf.generate(
                input_ids=src, attention_mask=mask, num_beams=3, max_new_tokens=10, do_sample=False, **options
            )
        expected = [[t for t in row[1:].tolist() if t not in (eos, ours.tokenizer.pad_id)] for row in theirs]
        params = BeamParams(num_beams=3, max_new_tokens=10, **options)
        beams = beam_search(ours.model, src, mask.bool(), start, eos, params)
        assert [hyps[0].tokens for hyps in beams] == expected, options


def test_beam_sampling_is_seeded_and_tends_to_beam_search(lm, capsys):  # noqa: F811
    kw = dict(num_beams=3, num_return_sequences=3, max_new_tokens=12, do_sample=True)
    a = lm.generate("alice ", seed=1, **kw)
    assert a == lm.generate("alice ", seed=1, **kw) and len(a) == 3
    draws = {tuple(lm.generate("alice ", seed=s, **kw)) for s in range(6)}
    assert len(draws) > 1  # sampled, not the beam search
    beams = lm.generate("alice ", num_beams=3, num_return_sequences=3, max_new_tokens=12)
    assert lm.generate("alice ", seed=0, **{**kw, "temperature": 1e-4}) == beams
    # top_k 1 still keeps two tokens per beam (an end and a way on), as transformers' beam sampling does
    assert len(lm.generate("alice ", seed=0, **{**kw, "top_k": 1})) == 3
    with pytest.raises(ConfigError, match="repetition_penalty"):
        lm.generate("alice ", num_beams=2, repetition_penalty=0)
    args = [
        "generate",
        str(lm.path),
        "--prompt",
        "alice ",
        "--max-new-tokens",
        "12",
        "--json",
        "--num-beams",
        "3",
    ]

    def cli(*extra) -> str:  # (compared with the CLI itself: its --dtype default may differ from the API's)
        assert main([*args, *extra]) == 0
        return json.loads(capsys.readouterr().out)[0]["completion"]

    plain = cli("--no-do-sample")
    assert cli() == plain  # the CLI's sampling default gives way to plain beam search...
    sampled = {cli("--do-sample", "--temperature", "1", "--seed", str(s)) for s in range(6)}
    assert len(sampled) > 1  # ...unless asked
    assert cli("--do-sample", "--temperature", "1", "--seed", "3") == cli(
        "--do-sample", "--temperature", "1", "--seed", "3"
    )
