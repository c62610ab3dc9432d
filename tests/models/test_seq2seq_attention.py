"""models/layers.Attention with heads of their own width (mT5: n_head * head_dim != n_embd), the one attention of
the encoder-decoders' encoder and cross-attention: equal to softmax(QK^T / sqrt(d) + mask) V written out, on the
fast and the explicit (attention-map) path."""

import math

import pytest
import torch

from lmforge.models.layers import Attention
from lmforge.models.seq2seq import Seq2SeqConfig, attention


def written_out(attn: Attention, x, memory, mask):
    B, T, _ = x.shape
    H, D = attn.n_head, attn.head_dim
    q = (x @ attn.q_proj.weight.T + attn.q_proj.bias).view(B, T, H, D).transpose(1, 2)
    k, v = (memory @ attn.kv_proj.weight.T + attn.kv_proj.bias).split(H * D, dim=-1)
    k, v = (t.view(B, -1, H, D).transpose(1, 2) for t in (k, v))
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(D)
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    y = (weights @ v).transpose(1, 2).reshape(B, T, H * D)
    return y @ attn.o_proj.weight.T + attn.o_proj.bias, weights


@pytest.mark.parametrize("head_dim", [None, 4, 10])
def test_attention_with_its_own_head_width_is_the_formula(head_dim):
    torch.manual_seed(0)
    attn = attention(Seq2SeqConfig(n_embd=12, n_head=3, head_dim=head_dim, dropout=0.0)).double().eval()
    width = 3 * (head_dim or 4)
    assert attn.q_proj.weight.shape == (width, 12) and attn.o_proj.weight.shape == (12, width)
    x, memory = torch.randn(2, 5, 12).double(), torch.randn(2, 7, 12).double()
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False  # the second source is padded
    want, want_weights = written_out(attn, x, memory, mask)
    kv = attn.keys_values(memory)
    torch.testing.assert_close(attn(x, kv, mask), want)
    out, weights = attn(x, kv, mask, need_weights=True)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(weights, want_weights)


@pytest.mark.parametrize("kind", ["t5", "mt5"])
def test_t5_attention_maps_equal_transformers(tmp_path, kind):
    """T5's relative-position bias enters the explicit path as a float mask: the maps lmforge.explain shows are
    transformers' own (output_attentions), and the logits those of the fast path."""
    pytest.importorskip("transformers")
    pytest.importorskip("sentencepiece")
    from lmforge.lm import load
    from tests.export.hf_models import source_batch
    from tests.export.test_hf_t5 import SOURCES, imported

    hf, _, ckpt = imported(tmp_path, kind)
    lm = load(ckpt)
    src, mask = source_batch(lm.tokenizer, SOURCES)
    tgt = torch.cat([torch.zeros(3, 1, dtype=torch.long), torch.randint(3, 40, (3, 6))], 1)
    with torch.no_grad():
        theirs = hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt, output_attentions=True)
        logits, maps = lm.model.attentions(src, tgt, mask)
        fast = lm.model(src, tgt, mask)
    torch.testing.assert_close(logits, fast, atol=1e-5, rtol=1e-5)
    real = mask.bool()
    for ours, hf_name in (("encoder", "encoder_attentions"), ("decoder", "decoder_attentions"),
                          ("cross", "cross_attentions")):  # fmt: skip
        assert len(maps[ours]) == 2
        for mine, want in zip(maps[ours], getattr(theirs, hf_name)):
            if ours == "encoder":  # padded queries attend to something arbitrary in either: compare real ones
                mine, want = mine.transpose(1, 2)[real], want.transpose(1, 2)[real]
            torch.testing.assert_close(mine, want, atol=1e-5, rtol=1e-4)
    # lmforge.explain shows them, over the source as the model reads it (ending with </s>)
    from lmforge.explain.attention import attentions

    shown = attentions(lm, SOURCES[0])
    assert shown.keys["encoder"][-1] == "</s>" and set(shown.maps) == {"encoder", "decoder", "cross"}
    assert shown.maps["cross"][0].shape[-1] == len(shown.keys["encoder"])
