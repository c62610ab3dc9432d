"""`train.precision auto`: bf16 autocast on CPUs with bf16 units for transformers wide enough, fp32 otherwise."""

import math

import pytest
import torch

import lmforge
from lmforge import device
from lmforge.models.gpt import GPT, GPTConfig

CPU = torch.device("cpu")


def gpt(width: int, layers: int = 1) -> GPT:
    return GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=layers, n_head=2, n_embd=width))


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)


@pytest.fixture
def plain_cpu(monkeypatch):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)


def test_matmul_width_is_the_width_holding_most_linear_weights():
    assert device.matmul_width(gpt(128, layers=4)) == 128
    assert device.matmul_width(gpt(384)) == 384
    assert device.matmul_width(torch.nn.Embedding(10, 8)) == 0


def test_auto_picks_bf16_only_for_wide_transformers_on_cpus_with_bf16_units(bf16_cpu):
    wide, narrow = gpt(device.CPU_BF16_MIN_WIDTH), gpt(128)
    assert device.autocast_dtype(CPU, "auto", wide) is torch.bfloat16
    assert device.autocast_dtype(CPU, "auto", narrow) is None
    assert device.autocast_dtype(CPU, "auto") is None  # no model: no measured reason for bf16
    assert device.autocast_dtype(CPU, "fp32", wide) is None
    assert device.autocast_dtype(CPU, "bf16", narrow) is torch.bfloat16  # asked for: given
    lstm = torch.nn.Sequential(torch.nn.LSTM(512, 512), torch.nn.Linear(512, 512))
    assert not device.cpu_bf16_pays(lstm)  # recurrent kernels were not measured: fp32


def test_auto_stays_fp32_on_cpus_without_bf16_units(plain_cpu):
    assert device.autocast_dtype(CPU, "auto", gpt(768)) is None
    with pytest.warns(UserWarning, match="no bf16 instructions"):
        assert device.autocast_dtype(CPU, "bf16", gpt(768)) is None


def test_trainer_autocasts_a_wide_model_and_says_so(bf16_cpu, char_data, tmp_path, tiny_overrides, capsys):
    width = device.CPU_BF16_MIN_WIDTH
    wide = dict(tiny_overrides, **{"model.n_embd": width, "model.n_layer": 1, "model.block_size": 16})
    wide["train.batch_size"] = 2
    result = lmforge.pretrain(char_data, tmp_path / "auto", overrides=wide, max_steps=2, progress=True)
    log = capsys.readouterr()
    out = log.out + log.err
    assert "with bfloat16 autocast" in out
    assert (
        f"train.precision auto chose bf16 autocast (this CPU has bf16 units and the model is {width} wide)"
        in out
    )
    assert math.isfinite(result.metrics["val_loss"])  # bf16 autocast trained without overflowing

    off = dict(wide, **{"train.precision": "fp32"})
    lmforge.pretrain(char_data, tmp_path / "fp32", overrides=off, max_steps=2, progress=True)
    log = capsys.readouterr()
    assert "autocast" not in log.out + log.err


def test_trainer_keeps_a_small_model_in_fp32_under_auto(
    bf16_cpu, char_data, tmp_path, tiny_overrides, capsys
):
    lmforge.pretrain(char_data, tmp_path / "run", overrides=tiny_overrides, max_steps=2, progress=True)
    log = capsys.readouterr()
    assert "autocast" not in log.out + log.err
