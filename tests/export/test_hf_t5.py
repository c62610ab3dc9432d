"""T5 and mT5 in: tiny random transformers models (relative-position buckets, ReLU with a tied and rescaled output,
gated GELU with an untied one and heads narrower than d_model / heads) and a sentencepiece tokenizer created here;
logits equal to transformers' to 1e-4 and greedy decoding (with and without the cache) equal to its generate."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

from lmforge.cli.main import main  # noqa: E402
from lmforge.errors import ConfigError  # noqa: E402
from lmforge.export.hf import export_hf, import_hf  # noqa: E402
from lmforge.generate.sampling import SamplingParams  # noqa: E402
from lmforge.generate.transduce import decode_tokens  # noqa: E402
from lmforge.lm import load  # noqa: E402
from tests.export.hf_models import sentencepiece_model, source_batch  # noqa: E402

SOURCES = ["translate: the lazy fox jumps over a stitch in time", "der braune hund", "a stitch in nine"]


def t5_tokenizer(folder):
    """T5's spiece.model (pad 0, eos 1, unk 2, no bos), converted by transformers."""
    folder.mkdir()
    (folder / "spiece.model").write_bytes(sentencepiece_model(pad_id=0, eos_id=1, unk_id=2, bos_id=-1))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer"}))
    return transformers.AutoTokenizer.from_pretrained(folder)


VARIANTS = {
    # the original T5: ReLU, output tied to the embeddings and rescaled by d_model**-0.5
    "t5": (
        transformers.T5Config,
        transformers.T5ForConditionalGeneration,
        dict(num_heads=2, d_kv=16, feed_forward_proj="relu", tie_word_embeddings=True),
    ),
    # T5 v1.1 / mT5: gated GELU, an untied output layer (below), 3 heads of 8 in a model of 32
    "mt5": (
        transformers.MT5Config,
        transformers.MT5ForConditionalGeneration,
        dict(num_heads=3, d_kv=8, feed_forward_proj="gated-gelu"),
    ),
}


def imported(tmp_path, kind):
    config_cls, model_cls, extra = VARIANTS[kind]
    folder = tmp_path / kind
    tok = t5_tokenizer(folder)
    torch.manual_seed(0)
    hf = model_cls(
        config_cls(
            vocab_size=len(tok),
            d_model=32,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            relative_attention_num_buckets=8,  # few buckets, so that the logarithmic ones are used
            relative_attention_max_distance=16,
            n_positions=48,  # lmforge decodes at most this many tokens (predict: until </s> or the block)
            dropout_rate=0.0,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            decoder_start_token_id=tok.pad_token_id,
            **extra,
        )
    ).eval()
    hf.save_pretrained(folder)
    if kind == "mt5":  # as the Hub's mT5 files are: an output layer of its own, tie_word_embeddings false
        from safetensors.torch import load_file, save_file

        weights = load_file(folder / "model.safetensors")
        weights["lm_head.weight"] = torch.randn_like(weights["shared.weight"])
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
        hf = model_cls.from_pretrained(folder).eval()
        assert hf.lm_head.weight is not hf.shared.weight
    return hf, tok, import_hf(folder, tmp_path / f"{kind}-ours")


@pytest.mark.parametrize("kind", ["t5", "mt5"])
def test_logits_agree_with_transformers(tmp_path, kind):
    hf, tok, ckpt = imported(tmp_path, kind)
    lm = load(ckpt)
    assert lm.model.config.relative_buckets == 8 and lm.model.config.position == "none"
    assert lm.tokenizer.encode(SOURCES[0]) == tok(SOURCES[0], add_special_tokens=False)["input_ids"]
    src, mask = source_batch(lm.tokenizer, SOURCES)
    assert src.shape[1] > 16  # distances beyond relative_max_distance share the last bucket
    tgt = torch.cat([torch.zeros(3, 1, dtype=torch.long), torch.randint(3, 40, (3, 11))], 1)
    with torch.no_grad():
        theirs = hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt)
        mine = lm.model(src, tgt, mask)
        memory = lm.model.encode(src, mask)
    real = mask.bool()
    assert torch.allclose(memory[real], theirs.encoder_last_hidden_state[real], atol=1e-4)
    assert torch.allclose(mine, theirs.logits, atol=1e-4)


@pytest.mark.parametrize("kind", ["t5", "mt5"])
def test_greedy_decoding_equals_transformers_generate(tmp_path, kind, capsys):
    hf, tok, ckpt = imported(tmp_path, kind)
    lm = load(ckpt)
    src, mask = source_batch(lm.tokenizer, SOURCES)
    with torch.no_grad():
        theirs = hf.generate(
            input_ids=src, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=10
        )
    for use_cache in (True, False):  # the relative bias of a cached step (queries after the cached ones)
        steps = decode_tokens(
            lm.model, src, mask, 0, SamplingParams(10, temperature=0.0), use_cache=use_cache
        )
        mine = torch.stack(list(steps), 1)
        width = theirs.shape[1] - 1  # transformers stops once every row has ended
        eos = lm.tokenizer.eos_id
        for row_mine, row_theirs in zip(mine[:, :width].tolist(), theirs[:, 1:].tolist()):
            end = row_theirs.index(eos) + 1 if eos in row_theirs else width
            assert row_mine[:end] == row_theirs[:end]
    (tmp_path / "in.txt").write_text("\n".join(SOURCES) + "\n")
    assert main(["predict", str(ckpt), "--task", "translate", "--input", str(tmp_path / "in.txt")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(SOURCES)


@pytest.mark.parametrize("kind", ["t5", "mt5"])
def test_export_round_trip_is_the_same_model(tmp_path, kind):
    hf, tok, ckpt = imported(tmp_path, kind)
    back = export_hf(ckpt, tmp_path / "back")
    assert json.loads((back / "config.json").read_text())["model_type"] == kind
    again = transformers.AutoModelForSeq2SeqLM.from_pretrained(back).eval()
    assert type(again) is type(hf)
    src, mask = source_batch(load(ckpt).tokenizer, SOURCES)
    tgt = torch.cat([torch.zeros(3, 1, dtype=torch.long), torch.randint(3, 40, (3, 6))], 1)
    with torch.no_grad():
        a = hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
        b = again(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert json.loads((back / "generation_config.json").read_text())["decoder_start_token_id"] == 0
    assert (
        transformers.AutoTokenizer.from_pretrained(back)(SOURCES[0])["input_ids"]
        == tok(SOURCES[0])["input_ids"]
    )


def test_a_default_seq2seq_has_no_transformers_counterpart(tmp_path):
    _, _, ckpt = imported(tmp_path, "t5")
    import dataclasses

    from lmforge.checkpoint import save_checkpoint
    from lmforge.models.registry import build_model

    lm = load(ckpt)
    model = build_model(
        "seq2seq", dict(n_layer=1, n_head=2, n_embd=16, vocab_size=lm.model.config.vocab_size)
    )
    plain = save_checkpoint(
        tmp_path / "plain",
        model,
        lm.tokenizer,
        {"arch": "seq2seq", "model": dataclasses.asdict(model.config)},
    )
    with pytest.raises(ConfigError, match="no transformers counterpart"):
        export_hf(plain, tmp_path / "x")
