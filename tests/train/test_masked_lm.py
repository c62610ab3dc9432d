"""Masked-LM pretraining: BERT's 80/10/10 masking, whole-word masking (jieba), training, evaluation, resume."""

import json

import pytest
import torch

import lmforge
from lmforge.cli.main import main
from lmforge.errors import ConfigError
from lmforge.tokenizers import Tokenizer
from lmforge.train.masking import Masker, token_pieces, word_ids
from tests.runs import assert_resume_is_exact

BERT = {
    "model.n_layer": 2,
    "model.n_head": 4,
    "model.n_embd": 64,
    "model.block_size": 32,
    "model.dropout": 0.0,
    "train.batch_size": 16,
    "train.eval_every": 100,
    "train.eval_tokens": 2048,
    "train.log_every": 1,
    "train.tensorboard": False,
    "optim.lr": 2e-3,
    "optim.warmup_steps": 20,
}


def test_masking_follows_bert_80_10_10_and_spares_special_tokens():
    tok = Tokenizer.train("char", ["some plain text to build a small character vocabulary"])
    masker = Masker(tok, mask_prob=0.15)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(5, tok.vocab_size, (200, 100))
    x[:, 0] = tok.bos_id
    inputs, labels = masker(x, gen)
    chosen = labels != -100
    assert abs(chosen.float().mean().item() - 0.15) < 0.01
    assert not chosen[:, 0].any()  # special tokens are never chosen
    assert torch.equal(labels[chosen], x[chosen]) and torch.equal(inputs[~chosen], x[~chosen])
    as_mask = (inputs[chosen] == tok.mask_id).float().mean().item()
    kept = (inputs[chosen] == x[chosen]).float().mean().item()
    assert abs(as_mask - 0.8) < 0.02
    assert 0.08 < kept < 0.13  # 10% kept on purpose, plus random draws that hit the same token


def test_whole_word_masking_keeps_english_and_chinese_words_together():
    text = "我们喜欢自然语言处理 and tokenization works"
    # Trained on other text, so the test's words are split into several subword tokens.
    corpus = ["token nation ization works work and an 我 们 喜 欢 自 然 语 言 处 理 " * 3] * 10
    for kind in ("char", "wordpiece", "bpe"):
        tok = Tokenizer.train(kind, corpus, vocab_size=290 if kind == "bpe" else 60, min_frequency=1)
        ids = torch.tensor([tok.encode(text)])
        pieces = token_pieces(tok)
        words = word_ids(ids[0].numpy(), pieces, torch.zeros(tok.vocab_size, dtype=torch.bool).numpy())
        groups = {}
        for i, w in zip(ids[0].tolist(), words.tolist()):
            groups.setdefault(w, []).append(pieces[i])
        texts = {"".join(g).strip(): len(g) for g in groups.values()}
        assert texts.get("tokenization", 0) > 1, (kind, texts)  # one word, several tokens
        if kind == "char":  # jieba's words of the Chinese text
            assert {"我们", "喜欢"} <= set(texts), texts
        masker = Masker(tok, mask_prob=0.5, whole_word=True)
        for seed in range(5):
            chosen = masker.select(ids, torch.Generator().manual_seed(seed))[0]
            for w in set(words.tolist()):
                assert len(set(chosen[torch.from_numpy(words == w)].tolist())) == 1  # all or nothing per word


def test_bert_learns_evaluates_and_refuses_to_generate(char_data, tmp_path, capsys):
    from lmforge.eval.baseline import unigram_baseline

    result = lmforge.pretrain(
        char_data, tmp_path / "run", arch="bert", overrides=BERT, max_steps=300, progress=False
    )
    m = result.metrics
    # A masked position sees only <|mask|> itself: anything better than the unigram baseline (2.94 nats here) and
    # than always guessing the space (~19% of the characters) comes from attending to its neighbours.
    assert m["val_loss"] < unigram_baseline(char_data)["loss"] - 0.15
    assert m["val_masked_accuracy"] > 0.22 and m["val_bits_per_byte"] is None
    lm = lmforge.load(tmp_path / "run")
    again = lm.evaluate(char_data, max_tokens=2048, batch_size=3)  # the masking does not depend on batching
    assert again["loss"] == pytest.approx(m["val_loss"], rel=1e-6)
    assert again["masked_accuracy"] == pytest.approx(m["val_masked_accuracy"])
    guesses = lm.fill_mask("alice sees bob at 3 o'c<|mask|>ock.")
    assert len(guesses) == 1 and len(guesses[0]) == 5 and guesses[0][0][1] >= guesses[0][1][1]
    with pytest.raises(ConfigError, match="encoder"):
        lm.generate("alice")
    assert main(["generate", str(tmp_path / "run"), "--prompt", "alice"]) == 2
    assert "cannot continue text" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(char_data), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["masked_accuracy"] > 0.22
    assert main(["info", str(tmp_path / "run")]) == 0
    assert "bidirectional encoder" in capsys.readouterr().out


def test_bert_resume_is_exact(char_data, tmp_path):
    overrides = dict(BERT, **{"model.dropout": 0.1, "train.eval_every": 7, "model.whole_word_mask": True})
    assert_resume_is_exact(char_data, tmp_path, arch="bert", overrides=overrides)
