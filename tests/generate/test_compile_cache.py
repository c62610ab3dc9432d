"""Where compiled decoding steps are cached for the next process (LMFORGE_COMPILE_CACHE)."""

from pathlib import Path

import torch

from lmforge.generate import sampling
from lmforge.generate.sampling import COMPILE_CACHE_ENV, DecodeStep, compile_cache_dir
from lmforge.models.registry import build_model


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv(COMPILE_CACHE_ENV, raising=False)
    assert compile_cache_dir() == Path.home() / ".cache" / "lmforge" / "compile"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "users-own"))
    assert compile_cache_dir() is None  # an inductor cache the user chose is left alone
    monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path / "lmforge"))
    assert compile_cache_dir() == tmp_path / "lmforge"
    monkeypatch.setenv(COMPILE_CACHE_ENV, "off")
    assert compile_cache_dir() is None


def test_a_decoding_step_compiles_into_the_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")  # set by an earlier compile in this process
    monkeypatch.setattr(sampling.torch, "compile", lambda model, **kw: model)  # no real compile here
    model = build_model("gpt", dict(vocab_size=11, block_size=8, n_layer=1, n_head=1, n_embd=8))
    DecodeStep(model)
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache")
    assert isinstance(next(model.parameters()), torch.Tensor)
