"""Marian and mBART encoder-decoders in and out: tiny random transformers models and sentencepiece tokenizers
created here, logits equal to transformers' to 1e-4, greedy translation equal to transformers' generate, and
`lmforge predict --task translate` on the imported model."""

import json
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

from lmforge.cli.main import main  # noqa: E402
from lmforge.export.hf import export_hf, import_hf  # noqa: E402
from lmforge.generate.transduce import encode_source  # noqa: E402
from lmforge.lm import load  # noqa: E402
from tests.export.hf_models import sentencepiece_model, source_batch  # noqa: E402

SOURCES = ["the lazy fox jumps", "der braune hund saute", "a stitch in nine"]


def marian_tokenizer(folder):
    """Marian's files: source.spm and target.spm, and vocab.json numbering their pieces (</s> 0, <unk> 1, <pad>
    last), loaded by transformers' own (sentencepiece) MarianTokenizer."""
    model = sentencepiece_model()
    folder.mkdir()
    for name in ("source.spm", "target.spm"):
        (folder / name).write_bytes(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {"</s>": 0, "<unk>": 1}
    for p in pieces:
        if p not in ("<s>", "</s>", "<unk>"):
            vocab.setdefault(p, len(vocab))
    vocab["<pad>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Recommended: pip install sacremoses."
        return transformers.MarianTokenizer(
            *(str(folder / name) for name in ("source.spm", "target.spm", "vocab.json"))
        )


def mbart_tokenizer(folder):
    """mBART's sentencepiece.bpe.model, converted by transformers (fairseq ids, language codes, <mask>)."""
    folder.mkdir()
    (folder / "sentencepiece.bpe.model").write_bytes(sentencepiece_model())
    config = {"tokenizer_class": "MBartTokenizer", "src_lang": "en_XX", "tgt_lang": "ro_RO"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return transformers.AutoTokenizer.from_pretrained(folder)


def hf_seq2seq(kind, folder):
    common = dict(
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        dropout=0.0,
    )
    if kind == "marian":
        tok = marian_tokenizer(folder)
        config = transformers.MarianConfig(
            vocab_size=len(tok.encoder),
            activation_function="swish",
            scale_embedding=True,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            decoder_start_token_id=tok.pad_token_id,
            forced_eos_token_id=None,
            **common,
        )
        model = transformers.MarianMTModel(config)
    else:
        tok = mbart_tokenizer(folder)
        config = transformers.MBartConfig(
            vocab_size=len(tok),
            scale_embedding=True,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            decoder_start_token_id=tok.convert_tokens_to_ids("ro_RO"),
            forced_eos_token_id=None,
            **common,
        )
        model = transformers.MBartForConditionalGeneration(config)
    torch.manual_seed(0)
    model.eval()
    with torch.no_grad():  # random, so that mapping it is tested (it starts at zero)
        model.final_logits_bias.normal_(0, 0.5)
    model.save_pretrained(folder)
    if kind == "marian":
        tok.save_pretrained(folder)
    return model, tok


def imported(tmp_path, kind):
    hf, tok = hf_seq2seq(kind, tmp_path / kind)
    return hf, tok, import_hf(tmp_path / kind, tmp_path / f"{kind}-ours")


@pytest.mark.parametrize("kind", ["marian", "mbart"])
def test_logits_agree_with_padded_sources(tmp_path, kind):
    hf, tok, ckpt = imported(tmp_path, kind)
    lm = load(ckpt)
    # lmforge's tokenizer gives transformers' ids (Marian: converted from source.spm + vocab.json here)
    assert [lm.tokenizer.encode(t) for t in SOURCES] == [
        tok(t, add_special_tokens=False)["input_ids"] for t in SOURCES
    ]
    assert lm.tokenizer.hf.encode(SOURCES[0]).ids == tok(SOURCES[0])["input_ids"]  # with its special tokens
    src, mask = source_batch(lm.tokenizer, SOURCES)
    start = hf.config.decoder_start_token_id
    tgt = torch.cat([torch.full((3, 1), start), torch.randint(4, 40, (3, 7))], 1)
    with torch.no_grad():
        theirs = hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
        mine = lm.model(src, tgt, mask)
        # the model reads its own start token at position 0, whatever start token a caller put there
        other = lm.model(src, torch.cat([torch.full((3, 1), lm.tokenizer.eos_id), tgt[:, 1:]], 1), mask)
    assert torch.allclose(mine, theirs, atol=1e-4)
    assert torch.equal(mine, other)


@pytest.mark.parametrize("kind", ["marian", "mbart"])
def test_greedy_translation_equals_transformers_generate(tmp_path, kind, capsys):
    hf, tok, ckpt = imported(tmp_path, kind)
    lm = load(ckpt)
    eos = lm.tokenizer.eos_id
    # sources end with </s>, as transformers' tokenizer writes them (mBART's then its source language code)
    suffix = [eos] + ([lm.tokenizer.token_to_id("en_XX")] if kind == "mbart" else [])
    assert lm.model.config.source_suffix == suffix
    assert (
        encode_source(lm.tokenizer, SOURCES[0], lm.model.config) == lm.tokenizer.encode(SOURCES[0]) + suffix
    )
    assert [tok(t)["input_ids"] for t in SOURCES] == [lm.tokenizer.encode(t) + suffix for t in SOURCES]
    src, mask = source_batch(lm.tokenizer, SOURCES, suffix=suffix)
    with torch.no_grad():
        out = hf.generate(input_ids=src, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=12)
    rows = [row[1:].tolist() for row in out]  # after the decoder's start token, up to the end-of-sequence one
    theirs = [
        lm.tokenizer.decode(r[: r.index(eos)] if eos in r else r, skip_special_tokens=False) for r in rows
    ]
    assert lm.transduce(SOURCES, max_new_tokens=12) == theirs  # transduce keeps special tokens
    (tmp_path / "in.txt").write_text("\n".join(SOURCES) + "\n")
    argv = ["predict", str(ckpt), "--task", "translate", "--input", str(tmp_path / "in.txt")]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(SOURCES)


@pytest.mark.parametrize("kind", ["marian", "mbart"])
def test_export_round_trip_is_the_same_model(tmp_path, kind):
    hf, tok, ckpt = imported(tmp_path, kind)
    back = export_hf(ckpt, tmp_path / "back")
    config = json.loads((back / "config.json").read_text())
    assert (
        config["model_type"] == kind and config["decoder_start_token_id"] == hf.config.decoder_start_token_id
    )
    again = transformers.AutoModelForSeq2SeqLM.from_pretrained(back).eval()
    assert type(again) is type(hf)
    src, mask = source_batch(load(ckpt).tokenizer, SOURCES)
    tgt = torch.cat([torch.full((3, 1), hf.config.decoder_start_token_id), torch.randint(4, 40, (3, 5))], 1)
    with torch.no_grad():
        a = hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
        b = again(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
    assert torch.allclose(a, b, atol=1e-5)
    gen = json.loads((back / "generation_config.json").read_text())
    assert gen["decoder_start_token_id"] == hf.config.decoder_start_token_id and gen["do_sample"] is False
    again_tok = transformers.AutoTokenizer.from_pretrained(back)
    assert again_tok(SOURCES[0])["input_ids"] == tok(SOURCES[0])["input_ids"]


def test_finetune_translate_on_an_imported_marian(tmp_path, capsys):
    _, _, ckpt = imported(tmp_path, "marian")
    pairs = [("the lazy fox", "der faule fuchs"), ("the brown dog", "der braune hund")] * 16
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"en": s, "de": t}) + "\n" for s, t in pairs), encoding="utf-8")
    argv = ["finetune", "--task", "translate", "--model", str(ckpt), "--train", str(data), "--dev", str(data)]
    argv += ["--source-field", "en", "--target-field", "de", "--out", str(tmp_path / "run"), "--epochs", "2"]
    assert main([*argv, "--batch-size", "8", "--train.threads", "1", "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 8
    tuned = load(tmp_path / "run" / "best").model.config
    assert tuned.decoder_start_token_id == load(ckpt).model.config.decoder_start_token_id  # Marian's <pad>
    assert tuned.logits_bias and tuned.sinusoid_layout == "halves"
