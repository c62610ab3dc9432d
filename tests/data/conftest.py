"""Fixtures for the `lmforge prepare` tests: reading a prepared data directory back."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge.data.shards import TokenShards
from lmforge.tokenizers import Tokenizer


def _split_ids(data_dir, split: str) -> np.ndarray:
    shards = TokenShards(data_dir, split)
    if not shards.arrays:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.asarray(a, dtype=np.int64) for a in shards.arrays])


def _split_docs(data_dir, split: str) -> list[str]:
    """The documents of a split, decoded: token ids cut at each eos (the last token must be eos)."""
    tok = Tokenizer.load(data_dir)
    ids = _split_ids(data_dir, split).tolist()
    assert ids and ids[-1] == tok.eos_id, "a split must end with the eos token"
    docs, cur = [], []
    for i in ids:
        if i == tok.eos_id:
            docs.append(tok.decode(cur, skip_special_tokens=False))
            cur = []
        else:
            cur.append(i)
    return docs


@pytest.fixture
def split_ids():
    return _split_ids


@pytest.fixture
def split_docs():
    return _split_docs
