"""RoBERTa and XLM-R encoders in and out: tiny random transformers models created here, their tokenizers (byte-level
BPE from vocab.json + merges.txt; a sentencepiece Unigram model trained here) converted by transformers, logits and
hidden states equal to transformers' to 1e-4, and a classifier fine-tuned on an imported one."""

import json
import random
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.export.hf import export_hf, import_hf  # noqa: E402
from lmforge.lm import load  # noqa: E402
from tests.export.hf_models import TEXT, sentencepiece_model  # noqa: E402

PAIRS = [("the lazy fox", "a dog saves time"), ("le renard brun", "der hund")]


def roberta_folder(folder):
    """A RoBERTa tokenizer as old Hub repositories ship it: vocab.json and merges.txt, no tokenizer.json."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(TEXT, vocab_size=320, special_tokens=specials, show_progress=False)
    folder.mkdir()
    bpe.save_model(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "RobertaTokenizer"}))
    return folder


def xlmr_folder(folder):
    """An XLM-R tokenizer as the Hub ships it without tokenizer.json: a sentencepiece Unigram model."""
    pytest.importorskip("sentencepiece")
    folder.mkdir()
    (folder / "sentencepiece.bpe.model").write_bytes(sentencepiece_model())
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "XLMRobertaTokenizer"}))
    return folder


FAMILIES = {
    "roberta": (roberta_folder, transformers.RobertaConfig, transformers.RobertaForMaskedLM),
    "xlm-roberta": (xlmr_folder, transformers.XLMRobertaConfig, transformers.XLMRobertaForMaskedLM),
}


def hf_encoder(kind, folder):
    """A tiny random masked-LM of `kind` saved with its slow tokenizer files into `folder`; (model, tokenizer)."""
    make_tokenizer, config_cls, model_cls = FAMILIES[kind]
    make_tokenizer(folder)
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    model = model_cls(
        config_cls(
            vocab_size=len(hf_tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=40,
            type_vocab_size=1,  # as roberta-base and xlm-roberta-base
            pad_token_id=hf_tok.pad_token_id,
            layer_norm_eps=1e-5,
        )
    ).eval()
    model.save_pretrained(folder)
    return model, hf_tok


def imported(tmp_path, kind):
    hf, hf_tok = hf_encoder(kind, tmp_path / kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the masked-LM model ships no pooler: it starts fresh
        ckpt = import_hf(tmp_path / kind, tmp_path / f"{kind}-ours")
    return hf, hf_tok, ckpt


@pytest.mark.parametrize("kind", ["roberta", "xlm-roberta"])
def test_logits_and_hidden_states_agree_with_padding_on_either_side(tmp_path, kind):
    hf, hf_tok, ckpt = imported(tmp_path, kind)
    lm = load(ckpt)
    assert lm.model.config.position_offset == hf_tok.pad_token_id + 1 == 2
    assert lm.model.config.block_size == 38  # 40 position rows, the first two before any real token
    for side in ("right", "left"):
        hf_tok.padding_side = side
        enc = hf_tok([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
        ids = [[lm.tokenizer.bos_id, *lm.tokenizer.encode(a), lm.tokenizer.eos_id] for a, _ in PAIRS]
        assert ids[0] == hf_tok(PAIRS[0][0])["input_ids"]  # the converted tokenizer gives transformers' ids
        with torch.no_grad():
            theirs = hf(**enc, output_hidden_states=True)
            mine = lm.model.encode(enc["input_ids"], enc["attention_mask"], torch.ones_like(enc["input_ids"]))
            logits = lm.model(enc["input_ids"], enc["attention_mask"])
        real = enc["attention_mask"].bool()
        # segment ids are ignored with one token type, as RoBERTa ignores them
        assert torch.allclose(mine[real], theirs.hidden_states[-1][real], atol=1e-4)
        assert torch.allclose(logits[real], theirs.logits[real], atol=1e-4)


@pytest.mark.parametrize("kind", ["roberta", "xlm-roberta"])
def test_export_round_trip_is_the_same_model(tmp_path, kind):
    hf, hf_tok, ckpt = imported(tmp_path, kind)
    back = export_hf(ckpt, tmp_path / "back")
    assert json.loads((back / "config.json").read_text())["model_type"] == kind
    again = transformers.AutoModelForMaskedLM.from_pretrained(back).eval()
    assert type(again) is type(hf)
    again_tok = transformers.AutoTokenizer.from_pretrained(back)
    enc = hf_tok(["the lazy fox jumps", "a dog"], padding=True, return_tensors="pt")
    assert again_tok(["the lazy fox jumps"])["input_ids"] == hf_tok(["the lazy fox jumps"])["input_ids"]
    with torch.no_grad():
        a, b = hf(**enc).logits, again(**enc).logits
    real = enc["attention_mask"].bool()
    assert torch.allclose(a[real], b[real], atol=1e-5)
    fill = transformers.pipeline("fill-mask", model=again, tokenizer=again_tok)
    assert len(fill(f"the lazy {again_tok.mask_token}", top_k=3)) == 3


def test_finetune_classify_on_an_imported_roberta(tmp_path, capsys):
    import lmforge
    from lmforge.cli.main import main

    _, _, ckpt = imported(tmp_path, "roberta")
    rng = random.Random(0)
    rows = ["text\tlabel"]
    for _ in range(128):
        label = rng.choice(["pos", "neg"])
        words = rng.sample(["the", "fox", "dog", "lazy", "brown", "time"], 3) + [
            "quick" if label == "pos" else "saves"
        ]
        rng.shuffle(words)
        rows.append(f"{' '.join(words)}\t{label}")
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    argv = ["finetune", "--task", "classify", "--model", str(ckpt), "--train", str(tmp_path / "train.tsv")]
    argv += ["--dev", str(tmp_path / "train.tsv"), "--out", str(tmp_path / "run"), "--epochs", "3"]
    assert (
        main([*argv, "--batch-size", "8", "--lr", "3e-3", "--train.threads", "1", "--quiet", "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["val_accuracy"] > 0.9
    clf = lmforge.pipeline("text-classification", model=tmp_path / "run" / "best")
    assert clf("the quick dog")["label"] == "pos" and clf("the lazy fox saves")["label"] == "neg"
