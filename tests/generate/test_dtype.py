"""`--dtype` / `dtype=`: bf16 weights against fp32 (where the CPU has bf16 units), the pre-packed bf16 Linear against
the plain one, refusals in one line, and the flag reaching the model."""

import pytest
import torch

import lmforge.device
from lmforge.checkpoint import load_for_inference, save_checkpoint
from lmforge.cli.main import main
from lmforge.device import cpu_has_native_bf16, inference_dtype
from lmforge.errors import ConfigError
from lmforge.lm import LM
from lmforge.models.inference import PackedLinear, to_inference_dtype
from lmforge.models.registry import build_model
from lmforge.tokenizers import Tokenizer

TEXT = "the quick brown fox jumps over the lazy dog.,!?\n"
needs_bf16 = pytest.mark.skipif(
    not cpu_has_native_bf16(), reason="this CPU has no bf16 instructions (AVX512-BF16 or AMX)"
)


def tiny_gpt(**extra):
    torch.manual_seed(0)
    cfg = dict(vocab_size=48, block_size=32, n_layer=2, n_head=2, n_embd=32)
    return build_model("gpt", {**cfg, **extra}).eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tok = Tokenizer.train("char", [TEXT] * 3)
    model = tiny_gpt(vocab_size=tok.vocab_size)
    config = {"arch": "gpt", "model": {k: getattr(model.config, k) for k in ("vocab_size", "block_size")}}
    config["model"].update(n_layer=2, n_head=2, n_embd=32)
    return save_checkpoint(tmp_path_factory.mktemp("dtype") / "ckpt", model, tok, config)


def test_inference_dtype_rules(monkeypatch):
    cpu = torch.device("cpu")
    assert inference_dtype(cpu, "fp32") == torch.float32
    with pytest.raises(ConfigError, match="unknown dtype 'half'; use one of auto, bf16, fp16, fp32"):
        inference_dtype(cpu, "half")
    with pytest.raises(ConfigError, match="fp16 runs on CUDA only"):
        inference_dtype(cpu, "fp16")
    monkeypatch.setattr(lmforge.device, "cpu_has_native_bf16", lambda: False)  # an AVX2-only CPU
    assert inference_dtype(cpu, "auto") == torch.float32
    with pytest.raises(ConfigError, match="bf16 instructions .* ~150x slower"):
        inference_dtype(cpu, "bf16")
    monkeypatch.setattr(lmforge.device, "cpu_has_native_bf16", lambda: True)
    assert inference_dtype(cpu, "bf16") == torch.bfloat16
    assert inference_dtype(cpu, "auto") == (torch.bfloat16 if lmforge.device.CPU_AUTO_BF16 else torch.float32)


@pytest.mark.parametrize("value", ["half", "fp16"])
def test_a_bad_dtype_is_one_error_line(ckpt, capsys, value):
    assert main(["generate", str(ckpt), "--prompt", "the", "--max-new-tokens", "2", "--dtype", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and ("dtype" in err[0] or "fp16" in err[0])


def test_none_and_fp32_keep_fp32_weights(ckpt):
    for dtype in (None, "fp32"):
        lm = LM.from_pretrained(ckpt, device="cpu", dtype=dtype)
        assert {p.dtype for p in lm.model.parameters()} == {torch.float32}
    assert LM.from_pretrained(ckpt, device="cpu", dtype="fp32").amp_dtype is None


@needs_bf16
def test_bf16_weights_score_and_generate_close_to_fp32(ckpt):
    full = LM.from_pretrained(ckpt, device="cpu", dtype="fp32")
    half = LM.from_pretrained(ckpt, device="cpu", dtype="bf16")
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    assert half.model.new_cache(1, 4).k[0].dtype == torch.bfloat16  # the KV cache follows the weights
    assert any(isinstance(m, PackedLinear) for m in half.model.modules())
    assert half.model.lm_head.weight is half.model.tok_emb.weight  # tied weights stay tied
    ids = [half.prompt_ids("the quick brown fox")]
    (lp_full, _, _), (lp_half, _, _) = full.token_logprobs(ids)[0], half.token_logprobs(ids)[0]
    assert torch.allclose(torch.tensor(lp_half), torch.tensor(lp_full), atol=0.05)
    x = torch.tensor(ids)
    with torch.no_grad():
        logits = half.model(x).float()
    assert torch.allclose(logits, full.model(x), atol=0.05)
    text = half.generate("the", max_new_tokens=5)
    assert isinstance(text, str)
    assert set(half.model.state_dict()) == set(full.model.state_dict())  # packing adds no checkpoint keys


@needs_bf16
def test_packed_bf16_linear_matches_the_plain_one():
    plain = to_inference_dtype(tiny_gpt(), torch.bfloat16, pack=False)
    packed = to_inference_dtype(tiny_gpt(), torch.bfloat16, pack=True)
    assert not any(isinstance(m, PackedLinear) for m in plain.modules())
    x = torch.randint(48, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = plain(x).float(), packed(x).float()
    assert torch.allclose(a, b, atol=2e-2, rtol=2e-2)
    with torch.no_grad():  # a changed weight is repacked (its version counter moved)
        packed.lm_head.weight.mul_(2)
        plain.lm_head.weight.mul_(2)
        assert torch.allclose(plain(x).float(), packed(x).float(), atol=4e-2, rtol=2e-2)


@needs_bf16
def test_a_dynamic_int8_model_keeps_its_fp32_scales_in_bf16():
    from lmforge.compress.quantize import quantize_model

    model = tiny_gpt()
    quantize_model(model, "dynamic-int8", include_output=True)
    x = torch.randint(48, (1, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x)
        to_inference_dtype(model, torch.bfloat16)
        out = model(x)
    assert model.lm_head.scale.dtype == torch.float32 and model.lm_head.weight_int8.dtype == torch.int8
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), ref, atol=0.05)


@pytest.mark.parametrize("dtype", ["fp32", pytest.param("bf16", marks=needs_bf16)])
def test_the_flags_reach_the_model(ckpt, tmp_path, monkeypatch, dtype):
    seen = []
    monkeypatch.setattr(
        LM, "generate", lambda self, *a, **k: seen.append(self.model.lm_head.weight.dtype) or []
    )
    assert main(["generate", str(ckpt), "--prompt", "the", "--dtype", dtype]) == 0
    import lmforge.eval.perplexity as perplexity

    monkeypatch.setattr(
        perplexity,
        "evaluate",
        lambda lm, *a, **k: seen.append(lm.model.lm_head.weight.dtype) or {"loss": 1.0},
    )
    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    assert main(["evaluate", str(ckpt), "--data", str(text), "--dtype", dtype, "--json"]) == 0
    assert main(["evaluate", str(ckpt), "--data", str(text), "--json"]) == 0  # auto: as the run validated
    expected = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    assert seen == [expected, expected, torch.float32]
    assert load_for_inference(ckpt, device="cpu", dtype=dtype).model.lm_head.weight.dtype == expected


def test_auto_on_a_cpu_gives_bf16_to_gpt_models_only(monkeypatch):
    from lmforge.checkpoint import apply_inference_dtype

    monkeypatch.setattr(lmforge.device, "cpu_has_native_bf16", lambda: True)
    cpu = torch.device("cpu")
    lstm = apply_inference_dtype(build_model("lstm", dict(vocab_size=20)), cpu, "auto")
    assert {p.dtype for p in lstm.parameters()} == {torch.float32}
    gpt = apply_inference_dtype(tiny_gpt(), cpu, "auto")
    expected = torch.bfloat16 if lmforge.device.CPU_AUTO_BF16 else torch.float32
    assert {p.dtype for p in gpt.parameters()} == {expected}
    from lmforge.compress.quantize import quantize_model

    int8 = tiny_gpt()
    quantize_model(int8, "dynamic-int8")
    apply_inference_dtype(int8, cpu, "auto")  # its fp32 kernels: auto keeps the rest fp32 too
    assert {p.dtype for p in int8.parameters()} == {torch.float32}


@needs_bf16
def test_serve_loads_a_language_model_in_the_dtype(ckpt):
    pytest.importorskip("fastapi")
    from lmforge.serve.app import load_served

    assert load_served(str(ckpt), device="cpu", dtype="bf16").lm.model.lm_head.weight.dtype == torch.bfloat16
    assert load_served(str(ckpt), device="cpu", dtype="fp32").lm.model.lm_head.weight.dtype == torch.float32


def test_compiled_packed_follows_the_weight_bytes(monkeypatch):
    import lmforge.models.inference as inference

    model = tiny_gpt()
    to_inference_dtype(model, torch.bfloat16, pack=False)
    weights = {id(m.weight): m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)}.values()
    nbytes = sum(w.numel() * w.element_size() for w in weights)  # the tied output matrix counts once
    monkeypatch.setattr(inference, "COMPILED_PACK_MIN_BYTES", nbytes)
    inference.pack_linears(model)
    assert {m.compiled_packed for m in model.modules() if isinstance(m, PackedLinear)} == {True}
    monkeypatch.setattr(inference, "COMPILED_PACK_MIN_BYTES", nbytes + 1)
    small = to_inference_dtype(tiny_gpt(), torch.bfloat16, pack=False)
    inference.pack_linears(small)
    assert {m.compiled_packed for m in small.modules() if isinstance(m, PackedLinear)} == {False}


@needs_bf16
@pytest.mark.parametrize("compiled_packed", [True, False])
def test_a_compiled_graph_calls_the_packed_kernel_only_when_told(compiled_packed):
    model = to_inference_dtype(tiny_gpt(), torch.bfloat16, pack=True)
    for m in model.modules():
        if isinstance(m, PackedLinear):
            m.compiled_packed = compiled_packed
    x = torch.randint(48, (1, 6), generator=torch.Generator().manual_seed(3))
    ops = []

    def backend(gm, example_inputs):
        ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    torch._dynamo.reset()
    with torch.no_grad():
        ref = model(x).float()
        out = torch.compile(model, backend=backend, fullgraph=True)(x).float()
    assert torch.allclose(out, ref, atol=1e-2)
    assert any("packed_linear" in op for op in ops) == compiled_packed
    with torch.no_grad():  # through inductor as decoding compiles (C++ wrapper): the op has a shape function
        from lmforge.generate.sampling import DecodeStep

        torch._dynamo.reset()
        out = torch.compile(model, dynamic=True, options=DecodeStep.CPU_OPTIONS)(x).float()
    assert torch.allclose(out, ref, atol=2e-2, rtol=2e-2)
