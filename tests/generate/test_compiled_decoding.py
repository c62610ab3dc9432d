"""The compiled one-token decoding step: same tokens as eager, nothing leaks into checkpoints, eager fallback."""

import pytest
import torch

from lmforge.device import use_compile
from lmforge.errors import ConfigError
from lmforge.generate import sampling
from lmforge.generate.sampling import DecodeStep, SamplingParams, generate_tokens
from lmforge.models.registry import build_model

LLAMA = dict(
    position="rope", norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=False, n_kv_head=2
)


def tiny_llama():
    torch.manual_seed(0)
    return build_model(
        "gpt", dict(vocab_size=61, block_size=48, n_layer=2, n_head=4, n_embd=32, **LLAMA)
    ).eval()


def test_compiled_steps_decode_the_eager_tokens_for_left_padded_rows():
    model = tiny_llama()
    keys = set(model.state_dict())
    x = torch.randint(61, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[True] * 6, [False, False] + [True] * 4])
    greedy = SamplingParams(12, temperature=0)
    eager = torch.stack(list(generate_tokens(model, x, greedy, prompt_mask=mask)))
    compiled = torch.stack(list(generate_tokens(model, x, greedy, prompt_mask=mask, compile=True)))
    assert torch.equal(eager, compiled)
    assert DecodeStep.of(model).compiled is not None  # it really ran compiled, without falling back
    assert set(model.state_dict()) == keys  # the compiled step is no submodule: checkpoints are unchanged


def test_a_failing_compile_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(sampling.torch, "compile", lambda model, **kw: broken)
    model = tiny_llama()
    x = torch.randint(61, (1, 5), generator=torch.Generator().manual_seed(2))
    greedy = SamplingParams(6, temperature=0)
    with pytest.warns(UserWarning, match="compiled decoding failed .*no C\\+\\+ compiler.*decoding eagerly"):
        out = torch.stack(list(generate_tokens(model, x, greedy, compile=True)))
    assert torch.equal(out, torch.stack(list(generate_tokens(model, x, greedy))))


def test_compile_setting():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_compile("auto", cpu) and use_compile("auto", cuda)
    assert use_compile("true", cpu) and use_compile(True, cpu) and not use_compile("off", cuda)
    with pytest.raises(ConfigError, match="compile must be one of auto, true, false, got 'sometimes'"):
        use_compile("sometimes", cpu)


def test_weights_changed_after_compiling_decode_eagerly_with_the_new_weights():
    model = tiny_llama()
    x = torch.randint(61, (1, 5), generator=torch.Generator().manual_seed(3))
    greedy = SamplingParams(8, temperature=0)
    list(generate_tokens(model, x, greedy, compile=True))  # compiled (on a CPU: with the weights frozen in)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.5)
    with pytest.warns(
        UserWarning, match="weights changed after its decoding step was compiled; decoding eagerly"
    ):
        after = torch.stack(list(generate_tokens(model, x, greedy, compile=True)))
    assert DecodeStep.of(model).compiled is None
    assert torch.equal(after, torch.stack(list(generate_tokens(model, x, greedy))))


def test_warm_up_compiles_in_the_background_while_calls_decode_eagerly():
    model = tiny_llama()
    x = torch.randint(61, (1, 5), generator=torch.Generator().manual_seed(4))
    greedy = SamplingParams(8, temperature=0)
    eager = torch.stack(list(generate_tokens(model, x, greedy)))
    ready = []
    thread = DecodeStep.warm_up(model, on_ready=ready.append)
    assert DecodeStep.warm_up(model) is thread  # once
    step = DecodeStep.of(model)
    during = torch.stack(list(generate_tokens(model, x, greedy, compile=True)))  # eager while it compiles
    thread.join(timeout=600)
    assert not thread.is_alive() and len(ready) == 1 and ready[0] > 0
    assert not step.warming and step.compiled is not None
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    calls = []
    real = step.compiled
    step.compiled = lambda *a, **k: calls.append(1) or real(*a, **k)
    after = torch.stack(list(generate_tokens(model, x, greedy, compile=True)))
    assert torch.equal(during, eager) and torch.equal(after, eager)
    assert len(calls) == 7  # every one-token step after the prompt's went through the compiled step
    masked = torch.tensor([[False, True, True, True, True], [True] * 5])
    rows = torch.cat([x, x.flip(1)])
    assert torch.equal(
        torch.stack(list(generate_tokens(model, rows, greedy, prompt_mask=masked, compile=True))),
        torch.stack(list(generate_tokens(model, rows, greedy, prompt_mask=masked))),
    )
    three = torch.randint(61, (3, 7), generator=torch.Generator().manual_seed(5))
    list(generate_tokens(model, three, greedy, compile=True))
    assert (
        counters["stats"]["unique_graphs"] == graphs
    )  # the warm-up's shapes cover these: no compile after it


def test_a_warm_up_that_fails_leaves_decoding_eager(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(sampling.torch, "compile", lambda model, **kw: broken)
    model = tiny_llama()
    with pytest.warns(UserWarning, match="compiled decoding failed .*no C\\+\\+ compiler"):
        DecodeStep.warm_up(model).join(timeout=60)
    assert DecodeStep.status(model) == "eager"
    x = torch.randint(61, (1, 5), generator=torch.Generator().manual_seed(6))
    greedy = SamplingParams(6, temperature=0)
    assert torch.equal(
        torch.stack(list(generate_tokens(model, x, greedy, compile=True))),
        torch.stack(list(generate_tokens(model, x, greedy))),
    )
