"""ONNX export: logits parity with onnxruntime, KV-cache greedy decoding through decode.onnx, classifiers, CLI."""

import contextlib
import dataclasses
import io
import json

import numpy as np
import pytest
import torch

from lmforge.checkpoint import load_checkpoint, save_checkpoint
from lmforge.cli.main import main
from lmforge.export.onnx import check_onnx, export_onnx, greedy_onnx, greedy_torch
from lmforge.models.registry import build_model
from lmforge.tokenizers import Tokenizer

ort = pytest.importorskip("onnxruntime")

TEXTS = ["the film was good", "an awful boring plot", "great acting and music", "dull and poor"]
LLAMA = dict(
    position="rope", norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=False, n_kv_head=1
)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train("wordpiece", TEXTS * 10, vocab_size=120, min_frequency=1)


def checkpoint(folder, tok, arch, cfg):
    torch.manual_seed(0)
    model = build_model(arch, cfg)
    return save_checkpoint(folder, model, tok, {"arch": arch, "model": dataclasses.asdict(model.config)})


def gpt_config(tok, style):
    return dict(
        vocab_size=tok.vocab_size,
        block_size=32,
        n_layer=2,
        n_head=2,
        n_embd=32,
        **(LLAMA if style == "llama" else {}),
    )


@pytest.fixture(scope="module")
def cli_export(tok, tmp_path_factory):
    """A GPT-2 style decoder exported through the CLI with --check --json (exports are slow: done once)."""
    folder = tmp_path_factory.mktemp("cli")
    ckpt = checkpoint(folder / "gpt", tok, "gpt", gpt_config(tok, "gpt2"))
    out, printed = folder / "onnx", io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", str(ckpt), "--format", "onnx", "--out", str(out), "--check", "--json"]) == 0
    return ckpt, out, json.loads(printed.getvalue())


def test_cli_export_check_json_and_bad_input(cli_export, capsys):
    ckpt, out, printed = cli_export
    check = printed["check"]
    assert (
        check["ok"]
        and check["onnxruntime_ms"] > 0
        and check["torch_ms"] > 0
        and "model.onnx" in printed["files"]
    )
    for argv, expected in (
        (
            ["export", str(ckpt), "--format", "tflite", "--out", str(out.parent / "a")],
            "unknown export format",
        ),
        (["export", str(ckpt), "--format", "onnx", "--out", str(out)], "not empty"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and expected in err[0]
    assert not (out.parent / "a").exists()


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_gpt_prefill_and_kv_cache_decode_match_pytorch(tok, tmp_path, style, cli_export):
    if style == "gpt2":
        ckpt, out, _ = cli_export
    else:
        ckpt = checkpoint(tmp_path / "gpt", tok, "gpt", gpt_config(tok, style))
        out = export_onnx(ckpt, tmp_path / "onnx")
    assert {"model.onnx", "decode.onnx", "tokenizer.json", "config.json"} <= {p.name for p in out.iterdir()}
    result = check_onnx(out, ckpt, repeats=2)
    assert result["ok"] and result["max_abs_diff"] <= 1e-4 and result["greedy_tokens_match"]
    # Independently of check_onnx: a batch of two prompts, prefilled then decoded token by token.
    model = load_checkpoint(ckpt)[0].eval()
    prompt = torch.randint(0, tok.vocab_size, (1, 6), generator=torch.Generator().manual_seed(5))
    tokens, diff = greedy_onnx(out, prompt.numpy(), 20, model)
    assert tokens == greedy_torch(model, prompt, 20) and diff <= 1e-4
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = torch.randint(0, tok.vocab_size, (3, 11))
    logits, present = session.run(None, {"input_ids": batch.numpy()})
    with torch.no_grad():
        assert np.abs(logits - model(batch).numpy()).max() <= 1e-4
    assert present.shape == (2, 2, 3, model.config.kv_heads, 11, 16)


@pytest.mark.parametrize("backbone", ["bert", "gpt"])
def test_classifier_logits_match_pytorch(tok, tmp_path, backbone):
    encoder = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=tok.vocab_size)
    ckpt = checkpoint(
        tmp_path / "clf",
        tok,
        "classifier",
        dict(
            backbone=backbone,
            encoder=encoder,
            labels=["neg", "pos"],
            vocab_size=tok.vocab_size,
            block_size=32,
        ),
    )
    out = export_onnx(ckpt, tmp_path / "onnx")
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "classifier" and config["labels"] == ["neg", "pos"]
    result = check_onnx(out, ckpt, repeats=2)
    assert result["ok"] and result["max_abs_diff"] <= 1e-4
    # Padding matters: a padded row must give the same logits as PyTorch with the same mask.
    model = load_checkpoint(ckpt)[0].eval()
    ids = torch.randint(0, tok.vocab_size, (2, 9))
    mask = torch.tensor([[1] * 9, [1] * 4 + [0] * 5])
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {
        "input_ids": ids.numpy(),
        "attention_mask": mask.numpy(),
        "token_type_ids": np.zeros((2, 9), np.int64),
    }
    logits = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]
    with torch.no_grad():
        assert np.abs(logits - model(ids, mask).numpy()).max() <= 1e-4
