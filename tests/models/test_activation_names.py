"""`gelu` is the exact GELU, `gelu_tanh` GPT-2's approximation; checkpoints of lmforge 0.1.0 keep their function."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from lmforge.checkpoint import load_checkpoint, save_checkpoint
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.layers import MLP
from lmforge.tokenizers import Tokenizer


def test_gelu_is_exact_and_gelu_tanh_is_gpt2s_approximation():
    torch.manual_seed(0)
    exact, approx = MLP(8, 16, "gelu", 0.0, True), MLP(8, 16, "gelu_tanh", 0.0, True)
    approx.load_state_dict(exact.state_dict())
    x = torch.randn(4, 8) * 3
    h = exact.up_proj(x)
    torch.testing.assert_close(exact(x), exact.down_proj(F.gelu(h)))
    torch.testing.assert_close(approx(x), exact.down_proj(F.gelu(h, approximate="tanh")))
    assert not torch.allclose(exact(x), approx(x), atol=1e-6)


def test_a_version_0_1_0_checkpoint_keeps_the_tanh_gelu_it_was_trained_with(tmp_path):
    tok = Tokenizer.train("char", ["abc def"] * 2)
    model = GPT(
        GPTConfig(
            vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8, activation="gelu_tanh"
        )
    )
    config = {
        "arch": "gpt",
        "model": {**model.config.__dict__, "activation": "gelu"},
        "run": {"model": {"activation": "gelu"}},
    }
    path = save_checkpoint(tmp_path / "old", model, tok, config)
    saved = json.loads((path / "config.json").read_text())
    saved["lmforge_version"] = "0.1.0"  # what the older release wrote
    (path / "config.json").write_text(json.dumps(saved))
    loaded, _, cfg = load_checkpoint(path)
    assert loaded.config.activation == "gelu_tanh" and cfg["run"]["model"]["activation"] == "gelu_tanh"
    x = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(loaded(x), model(x))
    # A checkpoint written now keeps "gelu" meaning the exact function.
    new = save_checkpoint(
        tmp_path / "new",
        GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8)),
        tok,
        {
            "arch": "gpt",
            "model": {
                **GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8).__dict__
            },
        },
    )
    assert load_checkpoint(new)[0].config.activation == "gelu"
