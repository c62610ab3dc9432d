"""mBART's language codes on import (import-hf --src-lang / --tgt-lang, or those its tokenizer_config.json names):
sources end with `</s> src_lang` and decoding starts from tgt_lang, as in transformers; a tiny random mBART made
here translates exactly as transformers' generate does with the same codes, and export-hf names them again."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

from lmforge.cli.main import main  # noqa: E402
from lmforge.export.hf import export_hf, import_hf  # noqa: E402
from lmforge.generate.transduce import encode_source  # noqa: E402
from lmforge.lm import load  # noqa: E402
from tests.export.test_hf_seq2seq import SOURCES, hf_seq2seq, mbart_tokenizer  # noqa: E402


def mbart_starting_at_eos(folder):
    """A tiny random mBART whose config starts decoding at </s> (as mbart-large-cc25's does): the target language
    is the tokenizer's, or the user's, to give."""
    tok = mbart_tokenizer(folder)
    config = transformers.MBartConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        dropout=0.0, scale_embedding=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.MBartForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_(0, 0.5)
    model.save_pretrained(folder)
    return model, tok


def hf_translations(hf, tok, lm, src_lang: str, tgt_lang: str) -> list[str]:
    tok.src_lang = src_lang
    batch = tok(SOURCES, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = hf.generate(
            **batch, decoder_start_token_id=tok.convert_tokens_to_ids(tgt_lang), do_sample=False, num_beams=1,
            max_new_tokens=10,
        )  # fmt: skip
    eos = lm.tokenizer.eos_id
    rows = [row[1:].tolist() for row in out]
    return [
        lm.tokenizer.decode(r[: r.index(eos)] if eos in r else r, skip_special_tokens=False) for r in rows
    ]


def test_the_tokenizer_configs_languages_are_used_on_import(tmp_path):
    hf, tok = mbart_starting_at_eos(tmp_path / "mbart")
    lm = load(import_hf(tmp_path / "mbart", tmp_path / "ours"))
    code = lm.tokenizer.token_to_id
    eos = lm.tokenizer.eos_id
    assert lm.model.config.source_suffix == [eos, code("en_XX")]
    assert lm.model.config.decoder_start_token_id == code("ro_RO")
    assert lm.config["source"]["languages"] == {"src_lang": "en_XX", "tgt_lang": "ro_RO"}
    ids = encode_source(lm.tokenizer, SOURCES[0], lm.model.config)
    assert ids == tok(SOURCES[0])["input_ids"] and ids[-2:] == [eos, code("en_XX")]
    assert lm.transduce(SOURCES, max_new_tokens=10) == hf_translations(hf, tok, lm, "en_XX", "ro_RO")


def test_src_and_tgt_lang_from_the_command_line(tmp_path, capsys):
    hf, tok = hf_seq2seq("mbart", tmp_path / "mbart")
    out = tmp_path / "de-fr"
    args = ["import-hf", str(tmp_path / "mbart"), "--out", str(out)]
    assert main([*args, "--src-lang", "de_DE", "--tgt-lang", "fr_XX"]) == 0
    lm = load(out)
    code = lm.tokenizer.token_to_id
    assert lm.model.config.source_suffix == [lm.tokenizer.eos_id, code("de_DE")]
    assert lm.model.config.decoder_start_token_id == code("fr_XX")
    tok.src_lang = "de_DE"
    assert encode_source(lm.tokenizer, SOURCES[1], lm.model.config) == tok(SOURCES[1])["input_ids"]
    assert lm.transduce(SOURCES, max_new_tokens=10) == hf_translations(hf, tok, lm, "de_DE", "fr_XX")
    # export-hf names the codes again, and starts transformers' decoder from the target one
    back = export_hf(out, tmp_path / "back")
    assert json.loads((back / "tokenizer_config.json").read_text())["src_lang"] == "de_DE"
    assert json.loads((back / "config.json").read_text())["decoder_start_token_id"] == code("fr_XX")
    capsys.readouterr()
    # a code the tokenizer does not know, or a model that is not an mBART: one line each
    assert main([*args[:-1], str(tmp_path / "bad"), "--src-lang", "xx_YY"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--src-lang 'xx_YY' is not a token of this mBART tokenizer" in err[0]
    hf_seq2seq("marian", tmp_path / "marian")
    assert (
        main(["import-hf", str(tmp_path / "marian"), "--out", str(tmp_path / "m"), "--tgt-lang", "de"]) == 2
    )
    assert "mBART's language codes; this is a marian checkpoint" in capsys.readouterr().err
