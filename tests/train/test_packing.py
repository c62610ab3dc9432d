"""Sequence packing: the bin packer, packed collation, and that a packed row computes what its examples alone do."""

import random

import pytest
import torch

from lmforge.models.registry import build_model
from lmforge.tasks.chat import IGNORE_INDEX
from lmforge.train.packing import PAD_SEGMENT, collate_packed, pack

LLAMA = dict(position="rope", norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=False, n_kv_head=2)


def test_pack_keeps_every_example_once_within_capacity():
    r = random.Random(0)
    lengths = [r.randint(1, 30) for _ in range(500)]
    rows = pack(lengths, 32)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 32 for row in rows)
    # Best-fit decreasing stays close to the bound of total length / capacity.
    assert len(rows) <= 1.1 * sum(lengths) / 32 + 1, (len(rows), sum(lengths) / 32)
    assert pack([5, 5, 5, 5], 10) == [[0, 1], [2, 3]]
    assert pack([6, 4, 7, 3], 10) == [[2, 3], [0, 1]]  # 7 and 3 fill one row exactly, 6 and 4 the other
    with pytest.raises(ValueError, match="11 tokens does not fit a row of 10"):
        pack([3, 11], 10)


def test_collate_packed_numbers_the_examples_of_each_row():
    rows = [([1, 2, 3], [2, 3, IGNORE_INDEX]), ([4, 5], [5, 6]), ([7], [8])]
    x, y, seg = collate_packed(rows, [[0, 1], [2]], pad_id=0)
    assert x.tolist() == [[1, 2, 3, 4, 5], [7, 0, 0, 0, 0]]
    assert y.tolist() == [[2, 3, IGNORE_INDEX, 5, 6], [8] + [IGNORE_INDEX] * 4]
    assert seg.tolist() == [[0, 0, 0, 1, 1], [0] + [PAD_SEGMENT] * 4]


@pytest.mark.parametrize("style", [{}, LLAMA], ids=["gpt2", "llama"])
def test_a_packed_row_gives_each_example_its_own_logits(style):
    torch.manual_seed(0)
    model = build_model("gpt", dict(vocab_size=97, block_size=24, n_layer=2, n_head=4, n_embd=32, **style)).eval()
    docs = [torch.randint(0, 97, (n,)) for n in (7, 5, 9)]
    alone = [model(d[None])[0] for d in docs]
    x = torch.cat([*docs, torch.zeros(3, dtype=torch.long)])[None]
    segments = torch.tensor([[0] * 7 + [1] * 5 + [2] * 9 + [PAD_SEGMENT] * 3])
    packed = model(x, segments=segments)[0]
    torch.testing.assert_close(packed[:21], torch.cat(alone), atol=1e-5, rtol=1e-5)
    # Without segments the later examples would see the earlier ones (and sit at later positions).
    assert not torch.allclose(model(x)[0, 7:12], alone[1], atol=1e-3)
    with pytest.raises(ValueError, match="do not combine with a cache"):
        model(x, model.new_cache(1), segments=segments)
