"""The BERT-style encoder: BERT's shape, bidirectional attention, padding masks and attention maps."""

import pytest
import torch

from lmforge.config import build_run_config
from lmforge.errors import ConfigError
from lmforge.models.bert import Bert, BertConfig
from lmforge.models.registry import build_model


def small(**kw) -> Bert:
    torch.manual_seed(0)
    return Bert(
        BertConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0, **kw)
    ).eval()


def test_bert_base_preset_has_bert_base_parameters():
    model = build_model("bert", build_run_config(preset="bert-base").model)
    # Hugging Face's BertModel (bert-base-uncased) has 109,482,240 parameters; the MLM head adds a 768x768
    # transform, its LayerNorm and a vocabulary bias (the output matrix is the tied word embedding).
    assert model.num_params() == 109_482_240 + (768 * 768 + 768) + 2 * 768 + 30522
    assert model.lm_head.weight is model.tok_emb.weight


def test_every_position_sees_the_whole_sequence():
    model = small()
    x = torch.randint(5, 50, (1, 10))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1 - 5) % 45 + 5  # change only the last token
    a, b = model.encode(x), model.encode(y)
    assert not torch.allclose(a[0, 0], b[0, 0])  # the first position sees the last one (no causal mask)


def test_padding_is_invisible_to_the_real_tokens():
    model = small()
    x = torch.randint(5, 50, (1, 7))
    padded = torch.cat([x, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], dim=1).long()
    alone = model.encode(x)
    with_mask = model.encode(padded, attention_mask=mask)[:, :7]
    without_mask = model.encode(padded)[:, :7]
    assert torch.allclose(alone, with_mask, atol=1e-5)
    assert not torch.allclose(alone, without_mask, atol=1e-3)  # the mask is what makes the difference


def test_attention_maps_match_the_fused_kernel_and_ignore_padding():
    model = small()
    x = torch.randint(5, 50, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        hidden, maps = model.encode(x, mask, output_attentions=True)
    assert torch.allclose(hidden, model.encode(x, mask), atol=1e-5)
    assert len(maps) == 2 and maps[0].shape == (2, 2, 9, 9)
    assert torch.allclose(maps[1].sum(-1), torch.ones(2, 2, 9))
    assert float(maps[0][1, :, :, 6:].abs().max()) == 0.0


def test_pooler_and_token_types():
    model = small()
    x = torch.randint(5, 50, (3, 8))
    assert model.pool(model.encode(x)).shape == (3, 16)
    types = torch.zeros_like(x)
    types[:, 4:] = 1
    assert not torch.allclose(model.encode(x), model.encode(x, token_type_ids=types))


@pytest.mark.parametrize("bad", [dict(n_embd=15), dict(mask_prob=0.0), dict(dropout=1.0)])
def test_bad_configs_are_refused(bad):
    with pytest.raises(ConfigError):
        Bert(BertConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, **{"n_embd": 16, **bad}))
