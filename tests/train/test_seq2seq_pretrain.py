"""Encoder-decoder pretraining: T5-style span corruption, training (pre-LN and post-LN), evaluation, transduce,
the CLI, and exact resume."""

import json

import pytest
import torch

import lmforge
from lmforge.cli.main import main
from lmforge.data.shards import TokenShards
from lmforge.errors import ConfigError
from lmforge.models.registry import model_config_class
from lmforge.tokenizers import Tokenizer
from lmforge.train.objectives import Seq2SeqDenoise, SpanCorruption
from tests.runs import assert_resume_is_exact, losses

S2S = {
    "model.n_layer": 2,
    "model.n_head": 2,
    "model.n_embd": 32,
    "model.block_size": 32,
    "model.dropout": 0.0,
    "train.batch_size": 16,
    "train.eval_every": 25,
    "train.eval_tokens": 1024,
    "train.log_every": 1,
    "train.tensorboard": False,
    "optim.lr": 3e-3,
    "optim.warmup_steps": 10,
}


def restore(source: list[int], target: list[int], mask: int) -> list[int]:
    """Put the target's spans back in place of the source's mask tokens."""
    spans, body = [], target[:-1]  # the target ends with end-of-sequence
    for t in body:
        if t == mask:
            spans.append([])
        else:
            spans[-1].append(t)
    spans = iter(spans)
    return [t for s in source for t in (next(spans) if s == mask else [s])]


def test_span_corruption_hides_15_percent_in_spans_and_the_pair_restores_the_text():
    tok = Tokenizer.train("char", ["alice sees bob at 3 o'clock."])
    mask, eos = tok.mask_id, tok.eos_id
    corrupt = SpanCorruption(mask, eos)
    gen = torch.Generator().manual_seed(0)
    hidden = total = 0
    span_lengths, starts_hidden = [], set()
    for length in [1, 2, 3, 7] + list(range(40, 160)) * 3:
        ids = torch.randint(5, tok.vocab_size, (length,), generator=gen).tolist()
        source, target = corrupt(ids, gen)
        assert restore(source, target, mask) == ids
        assert target[0] == mask and target[-1] == eos and source.count(mask) == target.count(mask) >= 1
        assert len(target) == corrupt.target_length(length)
        if length > 2:
            assert all(not (a == b == mask) for a, b in zip(source, source[1:]))  # spans never touch
        if length >= 40:
            hidden += len(target) - 1 - target.count(mask)
            total += length
            lengths = [len(s) for s in "".join("|" if t == mask else "x" for t in target[:-1]).split("|")[1:]]
            span_lengths += lengths
            starts_hidden.add(source[0] == mask)
    assert abs(hidden / total - 0.15) < 0.005
    assert abs(sum(span_lengths) / len(span_lengths) - 3.0) < 0.1 and len(set(span_lengths)) > 4
    assert starts_hidden == {True, False}
    again = SpanCorruption(mask, eos)(list(range(5, 105)), torch.Generator().manual_seed(7))
    assert again == corrupt(
        list(range(5, 105)), torch.Generator().manual_seed(7)
    )  # only the generator decides


def test_batches_are_corrupted_windows_of_the_training_stream(char_data):
    tok = Tokenizer.load(char_data / "tokenizer.json")
    cfg = model_config_class("seq2seq")(vocab_size=tok.vocab_size, block_size=32)
    shards = TokenShards(char_data, "train")
    objective = Seq2SeqDenoise(shards, cfg, 6, tok)
    src, src_mask, tgt_in, labels = objective.next_batch(torch.Generator().manual_seed(5))
    windows, _ = shards.sample_batch(6, 32, torch.Generator().manual_seed(5))  # the same draw of windows
    assert (
        src_mask.all()
        and (labels != -100).all()
        and int(objective.count_targets((src, src_mask, tgt_in, labels))) == labels.numel()
    )
    assert (tgt_in[:, 0] == tok.bos_id).all() and torch.equal(
        tgt_in[:, 1:], labels[:, :-1]
    )  # teacher forcing
    for i in range(6):
        assert restore(src[i].tolist(), labels[i].tolist(), tok.mask_id) == windows[i].tolist()
    with pytest.raises(ConfigError, match="noise density"):
        Seq2SeqDenoise(shards, model_config_class("seq2seq")(block_size=32, noise_density=0.9), 6, tok)


def val_losses(run_dir) -> list[float]:
    return [
        r["val_loss"]
        for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "val_loss" in r
    ]


def test_seq2seq_learns_evaluates_and_transduces(char_data, tmp_path, capsys):
    run = tmp_path / "run"
    result = lmforge.pretrain(char_data, run, arch="seq2seq", overrides=S2S, max_steps=100, progress=False)
    first, *_, last = val_losses(run)
    assert last < first - 0.6, val_losses(run)  # ~2.5 -> ~1.6 nats per target token
    assert result.metrics["val_bits_per_byte"] is None
    lm = lmforge.load(run)
    again = lm.evaluate(
        char_data, max_tokens=1024, batch_size=3
    )  # the corruption does not depend on batching
    assert again["loss"] == pytest.approx(result.metrics["val_loss"], rel=1e-5)
    answer = lm.transduce("alice sees <|mask|> at 3 o'c<|mask|>.")
    assert isinstance(answer, str) and answer.startswith("<|mask|>")
    assert lm.transduce(
        ["bob <|mask|> carol", "alice"], max_new_tokens=5, temperature=1.0, seed=1
    ) == lm.transduce(
        ["bob <|mask|> carol", "alice"], max_new_tokens=5, temperature=1.0, seed=1, use_cache=False
    )
    with pytest.raises(ConfigError, match="transduce"):
        lm.generate("alice")
    with pytest.raises(ConfigError, match="max_new_tokens"):
        lm.transduce("alice", max_new_tokens=32)
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "alice"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "transduce()" in err[0]
    assert main(["evaluate", str(run), "--data", str(char_data), "--json", "--max-tokens", "1024"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["loss"] == pytest.approx(result.metrics["val_loss"], rel=1e-5) and out["bits_per_byte"] is None
    text = tmp_path / "held_out.txt"
    text.write_text("carol meets dave at 5 o'clock.\n" * 4, encoding="utf-8")
    assert lm.evaluate(text)["loss"] < first


def test_post_ln_with_label_smoothing_trains(char_data, tmp_path):
    overrides = dict(
        S2S, **{"model.norm_position": "post", "model.label_smoothing": 0.1, "model.position": "learned"}
    )
    lmforge.pretrain(
        char_data, tmp_path / "run", arch="seq2seq", overrides=overrides, max_steps=75, progress=False
    )
    first, *_, last = val_losses(tmp_path / "run")
    assert last < first - 0.3, val_losses(tmp_path / "run")
    assert losses(tmp_path / "run")[-1] < losses(tmp_path / "run")[0]


def test_seq2seq_resume_is_exact(char_data, tmp_path):
    overrides = dict(S2S, **{"model.dropout": 0.1, "train.eval_every": 7, "train.batch_size": 8})
    assert_resume_is_exact(char_data, tmp_path, arch="seq2seq", overrides=overrides)
