"""Recurrent LMs: truncated BPTT with the state carried across batches, exact resume, stream evaluation."""

import numpy as np
import pytest
import torch

import lmforge
from lmforge.data.shards import TokenShards
from lmforge.errors import DataError
from lmforge.models.registry import build_model
from lmforge.models.rnn import LSTMConfig
from lmforge.train.objectives import TBPTT
from tests.runs import assert_resume_is_exact

SMALL = {
    "model.n_embd": 32,
    "model.n_hidden": 32,
    "model.n_layer": 2,
    "model.block_size": 16,
    "train.batch_size": 8,
    "train.eval_every": 50,
    "train.eval_tokens": 2000,
    "train.log_every": 1,
    "train.tensorboard": False,
    "optim.lr": 2e-2,
    "optim.warmup_steps": 0,
}


@pytest.mark.parametrize("arch", ["lstm", "gru", "rnn"])
def test_recurrent_models_learn_below_the_unigram_baseline(arch, char_data, tmp_path):
    from lmforge.eval.baseline import unigram_baseline

    result = lmforge.pretrain(
        char_data, tmp_path / "run", arch=arch, overrides=SMALL, max_steps=150, progress=False
    )
    assert result.metrics["val_loss"] < unigram_baseline(char_data)["loss"] - 0.7
    lm = lmforge.load(tmp_path / "run")
    assert lm.evaluate(char_data, max_tokens=2000)["loss"] == pytest.approx(
        result.metrics["val_loss"], rel=1e-5
    )
    assert lm.generate("alice ", max_new_tokens=10, temperature=0)


def test_tbptt_batches_are_consecutive_and_the_state_is_carried(char_data):
    data = TokenShards(char_data, "train")
    obj = TBPTT(data, LSTMConfig(block_size=8), batch_size=3)
    stream = np.concatenate([np.asarray(a) for a in data.arrays])
    width = (stream.size - 1) // 3
    x1, y1 = obj.next_batch(None)
    x2, _ = obj.next_batch(None)
    assert torch.equal(x1[1], torch.from_numpy(stream[width : width + 8].astype(np.int64)))
    assert torch.equal(y1[:, :-1], x1[:, 1:]) and torch.equal(x2[:, 0], y1[:, -1])
    model = build_model("lstm", dict(vocab_size=64, n_embd=8, n_hidden=8, n_layer=1, block_size=8))
    obj.loss_sum(model, (x1, y1))
    assert obj.state is not None and not obj.state[0].requires_grad
    obj.pos = obj.inputs.shape[1]  # the end of the epoch: the next batch starts over with a fresh state
    x, _ = obj.next_batch(None)
    assert obj.state is None and torch.equal(x, x1)


def test_stream_scoring_in_chunks_equals_one_pass():
    torch.manual_seed(0)
    model = build_model("gru", dict(vocab_size=30, n_embd=8, n_hidden=8, n_layer=2, block_size=7)).eval()
    tokens = np.random.default_rng(0).integers(0, 30, 50)
    nats, count = model.score_stream(tokens)
    x = torch.from_numpy(tokens.astype(np.int64))
    logits = model(x[None, :-1])[0]
    expected = torch.nn.functional.cross_entropy(logits, x[1:], reduction="sum").item()
    assert count == 49 and nats == pytest.approx(expected, rel=1e-5)


def test_lstm_resume_is_bit_exact(char_data, tmp_path):
    overrides = dict(SMALL, **{"model.dropout": 0.2, "train.eval_every": 7})
    assert_resume_is_exact(char_data, tmp_path, arch="lstm", overrides=overrides)


def test_too_little_data_for_the_streams(char_data, tmp_path):
    with pytest.raises(DataError, match="too few"):
        lmforge.pretrain(
            char_data,
            tmp_path / "run",
            arch="lstm",
            overrides=dict(SMALL, **{"train.batch_size": 5000}),
            max_steps=2,
            progress=False,
        )
