"""Length-bucketed fine-tuning batches: every example once per epoch, similar lengths together, reproducible."""

from __future__ import annotations

import random

import pytest
import torch

from lmforge.train.objectives import ShuffledEpochs


def epoch(obj: ShuffledEpochs, gen: torch.Generator) -> list[list[int]]:
    batches = [obj.next_indices(gen)]
    while obj.pos < obj.n_examples:
        batches.append(obj.next_indices(gen))
    return batches


def spread(batches, lengths) -> float:
    return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)


def test_bucketed_epochs_cover_every_example_once_with_similar_lengths_per_batch():
    rng = random.Random(0)
    lengths = [rng.randint(3, 300) for _ in range(1003)]
    bucketed, plain = ShuffledEpochs(1003, 8, lengths), ShuffledEpochs(1003, 8)
    b, p = epoch(bucketed, torch.Generator().manual_seed(1)), epoch(plain, torch.Generator().manual_seed(1))
    assert sorted(i for batch in b for i in batch) == list(range(1003))
    assert all(len(batch) == 8 for batch in b[:-1]) and len(b[-1]) == 1003 % 8  # the short batch comes last
    assert spread(b, lengths) < spread(p, lengths) / 5
    # Batches of long and short examples are interleaved, not sorted over the epoch.
    first_lengths = [lengths[batch[0]] for batch in b[:20]]
    assert first_lengths != sorted(first_lengths)
    # The same seed gives the same epoch; the next epoch is a different one.
    again = epoch(ShuffledEpochs(1003, 8, lengths), torch.Generator().manual_seed(1))
    assert again == b
    gen = torch.Generator().manual_seed(1)
    two = ShuffledEpochs(1003, 8, lengths)
    assert epoch(two, gen) == b and epoch(two, gen) != b


def test_a_restored_objective_continues_the_bucketed_epoch():
    lengths = list(range(100))
    a = ShuffledEpochs(100, 4, lengths)
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        a.next_indices(gen)
    b = ShuffledEpochs(100, 4, lengths)
    b.load_state_dict(a.state_dict(), torch.device("cpu"))
    state = gen.get_state()
    rest_a = [a.next_indices(gen) for _ in range(20)]
    gen.set_state(state)
    assert [b.next_indices(gen) for _ in range(20)] == rest_a


def test_fine_tuning_groups_by_length_only_when_asked(tmp_path):
    """train.group_by_length reaches the classification objective (off by default, as in transformers)."""
    import lmforge
    from lmforge.tasks.classify import run as ft

    seen = []
    real = ft.ClassifyObjective.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        seen.append(self.lengths is not None)

    train = tmp_path / "train.tsv"
    rows = ["text\tlabel"] + [
        f"{'good ' * (i % 5 + 1)}film\tpos" if i % 2 else f"{'bad ' * (i % 7 + 1)}film\tneg"
        for i in range(40)
    ]
    train.write_text("\n".join(rows) + "\n")
    ft.ClassifyObjective.__init__ = spy
    try:
        for flag in (False, True):
            lmforge.finetune(
                task="classify",
                model="lstm",
                train=str(train),
                out=str(tmp_path / f"run-{flag}"),
                epochs=1,
                overrides={"train.group_by_length": flag},
                progress=False,
            )
    finally:
        ft.ClassifyObjective.__init__ = real
    assert seen == [False, True]


def test_group_by_length_is_refused_where_it_would_be_ignored(char_data, tmp_path, tiny_overrides):
    import lmforge
    from lmforge.errors import ConfigError

    with pytest.raises(ConfigError, match="train.group_by_length applies to fine-tuning"):
        lmforge.pretrain(
            char_data,
            tmp_path / "run",
            overrides={**tiny_overrides, "train.group_by_length": True},
            max_steps=2,
            progress=False,
        )
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("ckpt-*"))
