import os
import random

import pytest
import torch

# Two xdist workers on two cores: one torch thread each, or the OpenMP pools fight and everything crawls.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def make_text(n_docs: int = 40, seed: int = 0) -> list[str]:
    """Small synthetic documents with enough regularity for a tiny model to learn quickly."""
    rng = random.Random(seed)
    names = ["alice", "bob", "carol", "dave", "erin", "frank"]
    verbs = ["sees", "helps", "calls", "meets", "likes", "finds"]
    docs = []
    for _ in range(n_docs):
        lines = []
        for _ in range(rng.randint(6, 12)):
            a, b = rng.sample(names, 2)
            lines.append(f"{a} {rng.choice(verbs)} {b} at {rng.randint(1, 12)} o'clock.")
        docs.append("\n".join(lines) + "\n")
    return docs


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    for i, doc in enumerate(make_text()):
        (folder / f"doc{i:03d}.txt").write_text(doc, encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def char_data(corpus_dir, tmp_path_factory):
    """A prepared data directory (char tokenizer) shared by the tests that only read it."""
    from lmforge.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare([str(corpus_dir)], str(out), tokenizer="char", val_fraction=0.2, seed=0, progress=False)
    return out


TINY = {
    "model.n_layer": 2,
    "model.n_head": 2,
    "model.n_embd": 32,
    "model.block_size": 32,
    "train.batch_size": 8,
    "train.eval_every": 10,
    "train.eval_tokens": 2048,
    "train.log_every": 1,
    "train.tensorboard": False,
    "optim.warmup_steps": 5,
    "optim.lr": 3e-3,
}


@pytest.fixture
def tiny_overrides():
    return dict(TINY)
