"""Sequence packing: the bin packer, packed collation, and that a packed row computes what its examples alone do."""

import random

import pytest
import torch

from lmforge.models.registry import build_model
from lmforge.train.labels import IGNORE_INDEX
from lmforge.train.packing import PAD_SEGMENT, collate_packed, pack

LLAMA = dict(
    position="rope", norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=False, n_kv_head=2
)


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
    model = build_model(
        "gpt", dict(vocab_size=97, block_size=24, n_layer=2, n_head=4, n_embd=32, **style)
    ).eval()
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


# ---- packed fine-tuning: the same training as padded batches, on fewer rows --------------------------------------
def test_packed_batches_hold_the_same_targets_in_fewer_rows():
    from lmforge.train.objectives import LabelledSequences as ChatObjective

    r = random.Random(0)
    rows = []
    for _ in range(64):
        n = r.randint(3, 40)
        rows.append(([r.randrange(1, 50) for _ in range(n)], [r.choice([IGNORE_INDEX, 7]) for _ in range(n)]))
    padded, packed = ChatObjective(rows, 0, 16), ChatObjective(rows, 0, 16, pack=True)
    for _ in range(4):
        a, b = (
            padded.next_batch(torch.Generator().manual_seed(1)),
            packed.next_batch(torch.Generator().manual_seed(1)),
        )
        assert len(b) == 3 and b[0].shape[0] < a[0].shape[0] and b[0].shape[1] == a[0].shape[1]
        assert ChatObjective.count_targets(a) == ChatObjective.count_targets(b)
        assert b[0].numel() < a[0].numel()


def chat_data(tmp_path):
    import json

    r = random.Random(0)
    words = "red blue green cat dog sun moon tree river stone".split()
    with open(tmp_path / "chats.jsonl", "w", encoding="utf-8") as fh:
        for _ in range(48):
            said = " ".join(r.choice(words) for _ in range(r.randint(1, 12)))
            fh.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": said},
                            {"role": "assistant", "content": said.upper()[:20]},
                        ]
                    }
                )
                + "\n"
            )
    return tmp_path / "chats.jsonl"


@pytest.fixture(scope="module")
def small_gpt(tmp_path_factory):
    import dataclasses

    from lmforge.checkpoint import save_checkpoint
    from lmforge.tokenizers import Tokenizer

    tok = Tokenizer.train(
        "char",
        ["<|system|>\n<|user|>\n<|assistant|>\n", "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ"],
    )
    torch.manual_seed(0)
    model = build_model(
        "gpt", dict(n_layer=2, n_head=2, n_embd=32, block_size=128, vocab_size=tok.vocab_size)
    )
    folder = tmp_path_factory.mktemp("gpt")
    return save_checkpoint(
        folder / "gpt", model, tok, {"arch": "gpt", "model": dataclasses.asdict(model.config)}
    )


def test_packed_chat_fine_tuning_trains_as_the_padded_one(small_gpt, tmp_path):
    import json

    import lmforge

    data = chat_data(tmp_path)
    runs = {}
    for packed in (False, True):
        result = lmforge.finetune(
            "chat",
            str(small_gpt),
            data,
            tmp_path / f"run-{packed}",
            dev=data,
            epochs=2,
            batch_size=8,
            lr=3e-3,
            progress=False,
            overrides={"train.pack": str(packed), "model.dropout": 0.0, "train.threads": 1},
        )
        runs[packed] = [
            json.loads(ln)["val_loss"]
            for ln in (tmp_path / f"run-{packed}" / "metrics.jsonl").read_text().splitlines()
            if "val_loss" in ln
        ]
        assert result.step == 12
    assert runs[False][-1] < runs[False][0]  # it learned something
    assert runs[True] == pytest.approx(runs[False], rel=1e-4)


def test_pack_is_refused_where_nothing_packs(char_data, tiny_overrides, tmp_path):
    import lmforge
    from lmforge.errors import ConfigError

    with pytest.raises(ConfigError, match="train.pack applies to causal-LM fine-tuning"):
        lmforge.pretrain(
            char_data, tmp_path / "run", overrides={**tiny_overrides, "train.pack": True}, progress=False
        )


def test_padded_widths_come_from_a_short_list():
    from lmforge.train.objectives import padded_width

    assert [padded_width(n) for n in (1, 9, 300)] == [1, 9, 300]  # round_to 1: the longest row
    assert [padded_width(n, 8) for n in (1, 9, 64, 65, 129, 300, 512)] == [8, 16, 64, 72, 144, 320, 512]
    assert padded_width(300, 8, limit=310) == 310 and padded_width(300, 8, limit=200) == 300
    widths = {padded_width(n, 8) for n in range(1, 1025)}
    assert len(widths) == 8 + 8 * 4  # multiples of 8 up to 64, then 8 per doubling up to 1024
    assert all(n <= padded_width(n, 8) <= max(n + 7, n * 9 / 8) for n in range(1, 1025))


@pytest.mark.parametrize("packed", [False, True])
def test_rounded_widths_train_on_the_same_targets_with_the_same_loss(packed):
    from lmforge.train.objectives import LabelledSequences

    r = random.Random(1)
    rows = []
    for _ in range(12):
        ids = [r.randrange(1, 97) for _ in range(r.randint(3, 20))]
        rows.append((ids, [t if r.random() < 0.7 else IGNORE_INDEX for t in ids[1:] + [5]]))
    torch.manual_seed(0)
    model = build_model("gpt", dict(vocab_size=97, block_size=24, n_layer=1, n_head=2, n_embd=16)).eval()
    batches = {}
    for round_to in (1, 8):
        objective = LabelledSequences(rows, 0, batch_size=12, pack=packed, limit=24)
        objective.round_to = round_to
        batches[round_to] = objective.next_batch(torch.Generator().manual_seed(2))
    exact, rounded = batches[1], batches[8]
    assert rounded[0].shape[1] % 8 == 0 and rounded[0].shape[1] >= exact[0].shape[1]
    assert objective.count_targets(rounded) == objective.count_targets(exact)
    with torch.no_grad():
        a, b = objective.loss_sum(model, exact), objective.loss_sum(model, rounded)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
