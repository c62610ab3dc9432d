"""Quantization: layer accuracy, int4 packing, quantized tiny GPTs and classifiers, save/load, the CLI."""

import dataclasses
import json

import pytest
import torch
from torch import nn

import lmforge
from lmforge.checkpoint import save_checkpoint
from lmforge.cli.main import main
from lmforge.compress.quantize import quantize_checkpoint
from lmforge.models.quantized import Int4Linear, Int8Linear, pack_int4, quantize_model, unpack_int4
from lmforge.models.registry import build_model
from lmforge.tokenizers import Tokenizer
from tests.conftest import TINY


def rel_error(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(0)
    return nn.Linear(256, 96)


@pytest.mark.parametrize(
    "quantized, tolerance",
    [
        (lambda m: Int8Linear.from_float(m), 0.01),
        (lambda m: Int8Linear.from_float(m, dynamic=True), 0.02),
        (lambda m: Int4Linear.from_float(m, 32), 0.10),
        (lambda m: Int4Linear.from_float(m, 128), 0.12),
    ],
)
def test_quantized_layers_match_the_float_layer(linear, quantized, tolerance):
    x = torch.randn(8, 5, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert rel_error(quantized(linear)(x), linear(x)) < tolerance


def test_int4_error_grows_with_the_group_size(linear):
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        errors = [rel_error(Int4Linear.from_float(linear, g)(x), linear(x)) for g in (32, 64, 128)]
    assert errors[0] < errors[2]


def test_a_dynamic_int8_model_compiles_in_one_graph_and_follows_changed_weights():
    # fbgemm's packed weight used to break the graph at every layer, and the layer index then recompiled the rest
    # until dynamo gave up (a compiled GPT-2 decoded at 0.57x eager).
    model = build_model("gpt", dict(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    quantize_model(model, "dynamic-int8", include_output=True)
    x = torch.randint(40, (2, 7), generator=torch.Generator().manual_seed(4))
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm

    torch._dynamo.reset()
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, backend=backend, fullgraph=True)(x)
        assert len(graphs) == 1 and torch.allclose(out, ref, atol=1e-5)
        model.lm_head.scale.mul_(2)  # changed buffers are packed again, eager or compiled
        again = model(x)
        assert not torch.allclose(again, ref, atol=1e-3)
        torch._dynamo.reset()
        assert torch.allclose(torch.compile(model, dynamic=True)(x), again, atol=1e-4)


def test_int4_packing_round_trips_exactly():
    q = torch.randint(0, 16, (7, 64), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (7, 32)
    assert torch.equal(unpack_int4(packed), q)


@pytest.fixture(scope="module")
def runs(char_data, tmp_path_factory):
    """A tiny GPT-2 style and a tiny Llama style model, trained on the char data; group size 32 fits both."""
    out = {}
    llama = {
        "model.position": "rope",
        "model.norm": "rmsnorm",
        "model.activation": "swiglu",
        "model.bias": False,
        "model.tie_embeddings": False,
        "model.n_kv_head": 1,
    }
    for name, extra in (("gpt2", {}), ("llama", llama)):
        run = tmp_path_factory.mktemp(name) / "run"
        lmforge.pretrain(char_data, run, overrides={**TINY, **extra}, max_steps=120, progress=False)
        out[name] = run
    return out


def greedy(lm, n=40):
    return lm.generate("alice ", max_new_tokens=n, temperature=0)


@pytest.mark.parametrize("style", ["gpt2", "llama"])
@pytest.mark.parametrize(
    "method, ppl_tolerance",
    [
        ("dynamic-int8", 0.03),
        ("int8-weight", 0.02),
        ("int4-weight", 0.06),
    ],
)
def test_quantized_gpt_keeps_its_perplexity_and_reloads_exactly(
    runs, char_data, tmp_path, style, method, ppl_tolerance
):
    original = lmforge.load(runs[style], device="cpu")
    out = quantize_checkpoint(runs[style], tmp_path / "q", method)
    quantized = lmforge.load(out, device="cpu")
    assert quantized.config["quantization"]["method"] == method
    assert "lm_head" not in quantized.config["quantization"]["layers"]
    assert isinstance(
        quantized.model.blocks[0].mlp.up_proj, Int4Linear if method == "int4-weight" else Int8Linear
    )
    base, ppl = original.evaluate(char_data)["perplexity"], quantized.evaluate(char_data)["perplexity"]
    assert abs(ppl - base) / base < ppl_tolerance
    a, b = greedy(original), greedy(quantized)
    assert sum(x == y for x, y in zip(a, b)) >= 0.75 * len(a)
    # The checkpoint holds what was in memory: quantizing in memory gives the same logits as loading it back.
    in_memory = lmforge.load(runs[style], device="cpu").model
    quantize_model(in_memory, method)
    x = torch.randint(
        0, original.model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        assert torch.equal(in_memory.eval()(x), quantized.model(x))


def test_size_on_disk_shrinks_int4_below_int8_below_fp32(runs, tmp_path):
    def linear_bytes(ckpt):
        from safetensors.torch import load_file

        state = load_file(str(ckpt / "model.safetensors"))
        return sum(
            v.numel() * v.element_size() for k, v in state.items() if "blocks." in k and "norm" not in k
        )

    fp32 = linear_bytes(runs["gpt2"] / "latest")
    int8 = linear_bytes(quantize_checkpoint(runs["gpt2"], tmp_path / "i8", "int8-weight"))
    int4 = linear_bytes(quantize_checkpoint(runs["gpt2"], tmp_path / "i4", "int4-weight"))
    assert int4 < int8 < fp32
    assert int8 < 0.3 * fp32 and int4 < 0.25 * fp32


def test_including_the_tied_output_layer_keeps_the_embedding_fp32(runs, tmp_path):
    out = quantize_checkpoint(runs["gpt2"], tmp_path / "q", "int8-weight", include_output=True)
    lm = lmforge.load(out, device="cpu")
    assert isinstance(lm.model.lm_head, Int8Linear) and lm.model.tok_emb.weight.dtype == torch.float32
    assert len(greedy(lm, 10)) > 0


@pytest.mark.parametrize("backbone", ["gpt", "bert"])
def test_a_quantized_classifier_still_predicts(tmp_path, backbone):
    texts = ["the film was good", "an awful boring plot", "great acting and music", "dull and poor"]
    tok = Tokenizer.train("wordpiece", texts * 10, vocab_size=120, min_frequency=1)
    torch.manual_seed(0)
    encoder = dict(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=tok.vocab_size)
    model = build_model(
        "classifier",
        dict(
            backbone=backbone,
            encoder=encoder,
            labels=["neg", "pos"],
            vocab_size=tok.vocab_size,
            block_size=32,
            dropout=0.0,
        ),
    )
    nn.init.normal_(model.head.weight, std=1.0)  # a random head that separates the classes clearly
    ckpt = save_checkpoint(
        tmp_path / "clf", model, tok, {"arch": "classifier", "model": dataclasses.asdict(model.config)}
    )
    out = quantize_checkpoint(ckpt, tmp_path / "q", "int8-weight")
    layers = json.loads((out / "config.json").read_text())["quantization"]["layers"]
    assert layers and all(name.startswith("backbone.") for name in layers)  # the head stays fp32
    x = torch.randint(0, tok.vocab_size, (64, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model.eval()(x), lmforge.load(out, device="cpu").model(x)
    assert rel_error(b, a) < 0.02 and (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9
    pipe = lmforge.pipeline("text-classification", model=out, device="cpu")
    assert pipe("the film was good")["label"] in ("neg", "pos")


def test_cli_quantize_with_report_json(runs, char_data, tmp_path, capsys):
    out = tmp_path / "q4"
    code = main(
        [
            "quantize",
            str(runs["gpt2"]),
            "--method",
            "int4-weight",
            "--group-size",
            "32",
            "--out",
            str(out),
            "--report",
            "--data",
            str(char_data),
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    report = result["report"]
    for side in ("original", "quantized"):
        assert set(report[side]) >= {"size_bytes", "tokens_per_s", "perplexity"}
        assert report[side]["tokens_per_s"] > 0
    assert report["quantized"]["size_bytes"] < report["original"]["size_bytes"]
    assert abs(report["quantized"]["perplexity"] / report["original"]["perplexity"] - 1) < 0.06
    assert lmforge.load(out).generate("bob ", max_new_tokens=5, temperature=0) is not None


def test_cli_rejects_bad_input_with_one_error_line(runs, char_data, tmp_path, capsys):
    ngram = tmp_path / "ngram"
    lmforge.pretrain(char_data, ngram, arch="ngram", overrides={"model.order": 2}, progress=False)
    capsys.readouterr()  # what fitting printed (e.g. a discount warning) is not the CLI's output
    cases = [
        ["quantize", str(ngram), "--method", "int8-weight", "--out", str(tmp_path / "a")],
        ["quantize", str(runs["gpt2"]), "--method", "int3", "--out", str(tmp_path / "b")],
        ["quantize", str(runs["gpt2"]), "--method", "int8-weight", "--out", str(tmp_path / "c"), "--report"],
        [
            "quantize",
            str(runs["gpt2"]),
            "--method",
            "int4-weight",
            "--group-size",
            "48",
            "--out",
            str(tmp_path / "d"),
        ],
    ]
    for argv, expected in zip(cases, ("n-gram", "unknown quantization method", "--data", "group-size")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and expected in err[0]
    assert not any((tmp_path / n).exists() for n in "abcd")
