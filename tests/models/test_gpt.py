import pytest
import torch

from lmforge.models.registry import PRESETS, build_model, get_preset


def tiny(**kw):
    cfg = dict(vocab_size=97, block_size=24, n_layer=2, n_head=4, n_embd=32)
    cfg.update(kw)
    return build_model("gpt", cfg).eval()


LLAMA = dict(
    position="rope", norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=False, n_kv_head=2
)


@pytest.mark.parametrize("style", [{}, LLAMA], ids=["gpt2", "llama"])
def test_kv_cache_matches_full_forward(style):
    torch.manual_seed(0)
    model = tiny(**style)
    x = torch.randint(0, 97, (3, 20))
    full = model(x)
    cache = model.new_cache(3)
    parts = [model(x[:, :7], cache, 0), model(x[:, 7:12], cache, 7)]
    parts += [model(x[:, i : i + 1], cache, i) for i in range(12, 20)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_causality_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = tiny(**LLAMA)
    x = torch.randint(0, 97, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 97
    torch.testing.assert_close(model(x)[:, :10], model(y)[:, :10])
    assert not torch.allclose(model(x)[:, 10:], model(y)[:, 10:])


def test_gpt2_preset_has_the_124m_shape():
    arch, cfg = get_preset("gpt2")
    model = build_model(arch, cfg)
    assert model.num_params() == 124_439_808  # GPT-2 small with tied embeddings
    flops = model.flops_per_token()
    assert flops["training"] == 3 * flops["forward"]
    # 2 FLOPs per weight of every matmul: 12 x 7,077,888 in the blocks (qkv, out, up, down) + the 768 x 50257
    # head, plus attention (QK^T and AV over 1024 keys).
    assert flops["forward"] == 2 * (12 * 7_077_888 + 768 * 50257) + 4 * 12 * 1024 * 768


def test_test_preset_is_about_a_tenth_of_a_million_parameters():
    model = build_model(*get_preset("test"))
    assert 50_000 < model.num_params() < 150_000
    assert set(PRESETS) >= {"test", "tiny", "gpt2", "llama-tiny"}


def test_weight_tying_and_gqa_shapes():
    tied = tiny()
    assert tied.lm_head.weight is tied.tok_emb.weight
    untied = tiny(**LLAMA)
    assert untied.lm_head.weight is not untied.tok_emb.weight
    qkv = untied.blocks[0].attn.qkv_proj.weight
    assert qkv.shape == ((4 + 2 * 2) * 8, 32)  # 4 query heads, 2 key/value heads of width 8
    assert untied.pos_emb is None and tied.pos_emb is not None


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="longer than block_size"):
        tiny()(torch.zeros(1, 25, dtype=torch.long))
