"""lmforge.reference.attention against PyTorch (float64): scaled dot-product attention against
F.scaled_dot_product_attention, multi-head attention against torch.nn.MultiheadAttention, the Transformer block
against lmforge's own GPT-2 block; every gradient against autograd; and the causal mask against the future."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.models.gpt import Block, GPTConfig
from lmforge.reference import attention
from lmforge.reference.gradcheck import assert_matches
from lmforge.reference.layers import embedding_forward

TOL = 1e-6
B, T, C, N_HEAD = 2, 5, 8, 2


def assert_b_k_gradient_is_zero(ours, theirs):
    """dL/db_k is zero in exact arithmetic: adding b_k to every key adds q_i . b_k to every score of row i,
    and softmax ignores a constant added to a whole row. Both sides hold only rounding noise."""
    assert np.abs(ours).max() < 1e-12 and np.abs(theirs.numpy()).max() < 1e-12


def np_(tensor):
    return tensor.detach().numpy().copy()


@pytest.mark.parametrize("causal", [True, False])
def test_scaled_dot_product_attention(causal):
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(B, N_HEAD, T, 4)) for _ in range(3))
    out, cache = attention.attention_forward(q, k, v, causal=causal)
    G = rng.normal(size=out.shape)
    dq, dk, dv = attention.attention_backward(G, cache)

    q_t, k_t, v_t = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    out_t = F.scaled_dot_product_attention(q_t, k_t, v_t, is_causal=causal)
    out_t.backward(torch.from_numpy(G))
    assert_matches(out, out_t, "forward")
    assert_matches(dq, q_t.grad, "dq")
    assert_matches(dk, k_t.grad, "dk")
    assert_matches(dv, v_t.grad, "dv")


def test_causal_attention_weights_are_lower_triangular():
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(1, T, 4)) for _ in range(3))
    p = attention.attention_forward(q, k, v, causal=True)[1][3]
    assert np.all(p[0][np.triu_indices(T, 1)] == 0.0)
    assert np.all(p[0][np.tril_indices(T)] > 0.0)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0)
    np.testing.assert_allclose(p[0, 0, 0], 1.0)  # the first position can only see itself


def mha_from_torch(mha):
    W_in, b_in = np_(mha.in_proj_weight), np_(mha.in_proj_bias)  # rows: [W_q^T; W_k^T; W_v^T]
    params = {}
    for i, name in enumerate("qkv"):
        params[f"W_{name}"] = W_in[i * C : (i + 1) * C].T.copy()
        params[f"b_{name}"] = b_in[i * C : (i + 1) * C]
    params["W_o"], params["b_o"] = np_(mha.out_proj.weight).T.copy(), np_(mha.out_proj.bias)
    return params


def test_multi_head_attention_matches_torch():
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(C, N_HEAD, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_bias.normal_(0, 0.5)  # torch starts the biases at zero; make them matter
        mha.out_proj.bias.normal_(0, 0.5)
    params = mha_from_torch(mha)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(B, T, C))
    y, cache = attention.mha_forward(x, params, N_HEAD, causal=True)
    G = rng.normal(size=y.shape)
    dx, grads = attention.mha_backward(G, cache)

    x_t = torch.tensor(x, requires_grad=True)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)  # True = may NOT attend
    y_t, _ = mha(x_t, x_t, x_t, attn_mask=future, need_weights=False)
    y_t.backward(torch.from_numpy(G))
    assert_matches(y, y_t, "forward")
    assert_matches(dx, x_t.grad, "dx")
    W_in_grad, b_in_grad = mha.in_proj_weight.grad, mha.in_proj_bias.grad
    for i, name in enumerate("qkv"):
        assert_matches(grads[f"W_{name}"], W_in_grad[i * C : (i + 1) * C].T, f"W_{name}")
    assert_matches(grads["b_q"], b_in_grad[:C], "b_q")
    assert_b_k_gradient_is_zero(grads["b_k"], b_in_grad[C : 2 * C])
    assert_matches(grads["b_v"], b_in_grad[2 * C :], "b_v")
    assert_matches(grads["W_o"], mha.out_proj.weight.grad.T, "W_o")
    assert_matches(grads["b_o"], mha.out_proj.bias.grad, "b_o")
    assert set(grads) == set(attention.MHA_PARAMS)


def gpt_block():
    """lmforge's GPT-2 block in float64, with every weight randomised (LayerNorm gains away from 1, biases
    nonzero) so that no term of the backward pass can hide behind a 1 or a 0."""
    torch.manual_seed(0)
    block = Block(
        GPTConfig(
            vocab_size=16,
            block_size=T,
            n_layer=1,
            n_head=N_HEAD,
            n_embd=C,
            dropout=0.0,
            activation="gelu_tanh",
        ),
        0,
    )  # the reference block is GPT-2's, tanh GELU
    block = block.double().eval()
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, 0.3)
    return block


def block_params_from_torch(block):
    qkv_w, qkv_b = np_(block.attn.qkv_proj.weight), np_(block.attn.qkv_proj.bias)
    params = {"ln1_gamma": np_(block.attn_norm.weight), "ln1_beta": np_(block.attn_norm.bias)}
    for i, name in enumerate("qkv"):
        params[f"W_{name}"] = qkv_w[i * C : (i + 1) * C].T.copy()
        params[f"b_{name}"] = qkv_b[i * C : (i + 1) * C]
    params.update(
        W_o=np_(block.attn.o_proj.weight).T.copy(),
        b_o=np_(block.attn.o_proj.bias),
        ln2_gamma=np_(block.mlp_norm.weight),
        ln2_beta=np_(block.mlp_norm.bias),
        W_1=np_(block.mlp.up_proj.weight).T.copy(),
        b_1=np_(block.mlp.up_proj.bias),
        W_2=np_(block.mlp.down_proj.weight).T.copy(),
        b_2=np_(block.mlp.down_proj.bias),
    )
    return params


def block_grads_from_torch(block):
    qkv_w, qkv_b = block.attn.qkv_proj.weight.grad, block.attn.qkv_proj.bias.grad
    grads = {"ln1_gamma": block.attn_norm.weight.grad, "ln1_beta": block.attn_norm.bias.grad}
    for i, name in enumerate("qkv"):
        grads[f"W_{name}"] = qkv_w[i * C : (i + 1) * C].T
        grads[f"b_{name}"] = qkv_b[i * C : (i + 1) * C]
    grads.update(
        W_o=block.attn.o_proj.weight.grad.T,
        b_o=block.attn.o_proj.bias.grad,
        ln2_gamma=block.mlp_norm.weight.grad,
        ln2_beta=block.mlp_norm.bias.grad,
        W_1=block.mlp.up_proj.weight.grad.T,
        b_1=block.mlp.up_proj.bias.grad,
        W_2=block.mlp.down_proj.weight.grad.T,
        b_2=block.mlp.down_proj.bias.grad,
    )
    return grads


def test_transformer_block_matches_lmforge_gpt_block():
    block = gpt_block()
    params = block_params_from_torch(block)
    assert set(params) == set(attention.init_block_params(C, 4 * C, np.random.default_rng(0)))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(B, T, C))
    y, cache = attention.block_forward(x, params, N_HEAD)
    G = rng.normal(size=y.shape)
    dx, grads = attention.block_backward(G, cache)

    x_t = torch.tensor(x, requires_grad=True)
    y_t = block(x_t)
    y_t.backward(torch.from_numpy(G))
    assert_matches(y, y_t, "forward")
    assert_matches(dx, x_t.grad, "dx")
    expected = block_grads_from_torch(block)
    assert grads.keys() == expected.keys()
    assert_b_k_gradient_is_zero(grads.pop("b_k"), expected.pop("b_k"))
    for name, g in expected.items():
        assert_matches(grads[name], g, name)


def change_future(x, t0, rng):
    x2 = x.copy()
    x2[:, t0:] += rng.normal(size=x2[:, t0:].shape)
    return x2


@pytest.mark.parametrize("piece", ["attention", "mha"])
def test_causal_mask_blocks_the_future(piece):
    """Changing the inputs at positions >= t0 leaves every output before t0 unchanged (and does change the
    outputs from t0 on, so the test would notice a mask that blocks everything). Without the mask the past
    outputs do change, so the test would notice a missing mask too."""
    rng = np.random.default_rng(3)
    params = attention.init_mha_params(C, rng, std=0.5)
    t0 = 3

    def run(x, causal=True):
        if piece == "attention":
            return attention.attention_forward(x, x, x, causal)[0]
        return attention.mha_forward(x, params, N_HEAD, causal)[0]

    x = rng.normal(size=(B, T, C))
    x2 = change_future(x, t0, rng)
    np.testing.assert_allclose(run(x)[:, :t0], run(x2)[:, :t0], rtol=0, atol=1e-12)
    assert np.abs(run(x)[:, t0:] - run(x2)[:, t0:]).min() > 1e-6
    assert np.abs(run(x, causal=False)[:, :t0] - run(x2, causal=False)[:, :t0]).max() > 1e-3


def test_causal_block_future_tokens_do_not_change_past_outputs():
    """Through embedding + a Transformer block: replacing the token at position t0 changes nothing before t0."""
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(16, C))
    params = block_params_from_torch(gpt_block())
    ids = rng.integers(0, 16, size=(B, T))
    ids2 = ids.copy()
    t0 = 2
    ids2[:, t0] = (ids[:, t0] + 1) % 16

    def run(tokens, causal=True):
        return attention.block_forward(embedding_forward(tokens, emb)[0], params, N_HEAD, causal)[0]

    np.testing.assert_allclose(run(ids)[:, :t0], run(ids2)[:, :t0], rtol=0, atol=1e-12)
    assert np.abs(run(ids)[:, t0:] - run(ids2)[:, t0:]).max() > 1e-3
    assert np.abs(run(ids, False)[:, :t0] - run(ids2, False)[:, :t0]).max() > 1e-3


def test_causal_gradients_never_reach_the_future():
    """The backward view of the same fact: a loss on the outputs before t0 sends no gradient to inputs at or
    after t0, but does send one to every input before t0."""
    rng = np.random.default_rng(5)
    params = block_params_from_torch(gpt_block())
    x = rng.normal(size=(B, T, C))
    t0 = 3
    y, cache = attention.block_forward(x, params, N_HEAD)
    G = np.zeros_like(y)
    G[:, :t0] = rng.normal(size=G[:, :t0].shape)
    dx, _ = attention.block_backward(G, cache)
    assert np.all(dx[:, t0:] == 0.0)
    assert np.abs(dx[:, :t0]).min() > 0.0
