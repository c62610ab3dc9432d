"""DP-SGD for GPT language models (train/privacy.py): pretraining over fixed windows, `finetune --task lm` and
`--task chat`: Opacus's per-example gradients of a GPT are each example's own, the epsilon spent ends at the target,
the loss goes down, a run resumes exactly, and what DP-SGD cannot protect is refused."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

pytest.importorskip("opacus")

import lmforge  # noqa: E402
from lmforge.checkpoint import save_checkpoint  # noqa: E402
from lmforge.cli.main import main  # noqa: E402
from lmforge.errors import ConfigError  # noqa: E402
from lmforge.models.registry import build_model  # noqa: E402
from lmforge.tasks.finetune import finetune  # noqa: E402
from lmforge.tokenizers import Tokenizer  # noqa: E402


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize(
    "shape",
    [
        dict(),
        dict(
            position="rope",
            norm="rmsnorm",
            activation="swiglu",
            bias=False,
            tie_embeddings=False,
            n_kv_head=1,
        ),
    ],
    ids=["gpt2-style", "llama-style"],
)
def test_gpt_per_example_gradients_are_each_examples_own(shape):
    """Opacus's per-example gradients of a GPT (learned positions with the batch dimension, tied embeddings; or
    rotary positions and lmforge's RMSNorm through torch.func) equal each example's gradient computed alone."""
    opacus = pytest.importorskip("opacus")
    torch.manual_seed(0)
    model = build_model("gpt", dict(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11, **shape))
    model.batched_positions = True  # what the DP-SGD hook's prepare_model sets (train/privacy.py)
    x = torch.randint(0, 11, (3, 8))

    def loss_of(net, rows):
        return torch.nn.functional.cross_entropy(net(rows[:, :-1]).reshape(-1, 11), rows[:, 1:].reshape(-1))

    alone = []
    for i in range(3):
        model.zero_grad()
        loss_of(model, x[i : i + 1]).backward()
        alone.append({n: p.grad.clone() for n, p in model.named_parameters()})
    private = opacus.GradSampleModule(model, batch_first=True, loss_reduction="mean")
    model.zero_grad()
    loss_of(private, x).backward()
    for name, p in model.named_parameters():
        for i in range(3):
            assert torch.allclose(p.grad_sample[i], alone[i][name], atol=1e-5), (name, i)


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory):
    from lmforge.data.prepare import prepare
    from tests.conftest import make_text

    folder = tmp_path_factory.mktemp("dp-lm")
    (folder / "corpus.txt").write_text("".join(make_text(60)), encoding="utf-8")
    prepare(
        [str(folder / "corpus.txt")], str(folder / "data"), tokenizer="char", val_fraction=0.2, progress=False
    )
    return folder / "data"


def test_dp_gpt_pretraining_spends_its_budget_and_learns(lm_data, tmp_path):
    """60 DP-SGD steps at epsilon 4 over the fixed 32-character windows: the spent epsilon ends just under the
    target (the noise is calibrated for exactly these steps) and the loss falls well below the uniform guess."""
    from lmforge.tasks.lm.run import pretrain
    from tests.conftest import TINY
    from tests.runs import losses

    overrides = dict(TINY, **{"train.batch_size": 32, "optim.lr": 1e-2, "train.eval_every": 60})
    overrides.update({"train.dp_epsilon": 4.0, "train.dp_delta": 1e-4})
    result = pretrain(lm_data, tmp_path / "run", overrides=overrides, max_steps=60, progress=False)
    assert 3.8 < result.metrics["dp_epsilon"] <= 4.0 and result.metrics["dp_delta"] == 1e-4
    curve = losses(tmp_path / "run")
    assert sum(curve[-10:]) / 10 < sum(curve[:3]) / 3 - 0.8
    card = (result.run_dir / "latest" / "README.md").read_text(encoding="utf-8")
    assert "DP-SGD" in card and "epsilon" in card
    lm = lmforge.load(result.latest)  # an ordinary GPT checkpoint
    assert lm.generate("alice", max_new_tokens=5, do_sample=False)


def test_dp_finetune_lm_keeps_the_origin_in_the_card(lm_data, tmp_path, capsys):
    """`finetune --task lm --dp-epsilon` (continued pretraining of a GPT checkpoint on raw text) trains privately;
    the card says where the weights came from as well as the privacy spent."""
    from tests.conftest import make_text

    torch.manual_seed(0)
    tok = Tokenizer.load(lm_data / "tokenizer.json")
    model = build_model("gpt", dict(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=tok.vocab_size))
    base = save_checkpoint(
        tmp_path / "base", model, tok, {"arch": "gpt", "model": dataclasses.asdict(model.config)}
    )
    (tmp_path / "more.txt").write_text("".join(make_text(30, seed=3)), encoding="utf-8")
    args = ["finetune", "--task", "lm", "--model", str(base), "--train", str(tmp_path / "more.txt")]
    flags = [
        "--out",
        str(tmp_path / "run"),
        "--quiet",
        "--dp-epsilon",
        "3",
        "--dp-delta",
        "1e-3",
        "--epochs",
        "2",
    ]
    assert main([*args, *flags, "--batch-size", "16"]) == 0
    assert "privacy: epsilon" in capsys.readouterr().out
    card = (tmp_path / "run" / "latest" / "README.md").read_text(encoding="utf-8")
    assert "DP-SGD" in card and str(base) in card


def test_dp_chat_finetune_spends_at_most_its_budget_and_learns(tmp_path):
    from tests.tasks.test_chat import NAMES, convo, write_jsonl

    texts = ["<|system|>\n<|user|>\n<|assistant|>\n", "abcdefghijklmnopqrstuvwxyz 0123456789.,!?'"]
    tok = Tokenizer.train("char", texts)
    torch.manual_seed(0)
    model = build_model("gpt", dict(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=tok.vocab_size))
    base = save_checkpoint(
        tmp_path / "gpt", model, tok, {"arch": "gpt", "model": dataclasses.asdict(model.config)}
    )
    train = write_jsonl(tmp_path / "train.jsonl", [convo(n, system=False) for n in NAMES for _ in range(10)])
    dev = write_jsonl(tmp_path / "dev.jsonl", [convo(n, system=False) for n in NAMES[:5]])
    result = finetune(
        "chat", str(base), train, tmp_path / "run", dev=dev, epochs=3, batch_size=30, lr=1e-2,
        progress=False, dp_epsilon=8.0, dp_delta=1e-3,
    )  # fmt: skip
    assert 7.5 < result.metrics["dp_epsilon"] <= 8.0
    logged = [json.loads(ln) for ln in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in logged if "val_loss" in r]
    assert val[-1] < 0.7 * val[0]  # 2.5 -> 1.5 nats at seed 0
    with pytest.raises(ConfigError, match="train.pack"):
        finetune(
            "chat", str(base), train, tmp_path / "packed", epochs=1, progress=False, dp_epsilon=8.0,
            dp_delta=1e-3, overrides={"train.pack": "true"},
        )  # fmt: skip


def test_dp_pretraining_refuses_what_it_cannot_protect(lm_data, tmp_path):
    from lmforge.tasks.lm.run import pretrain
    from tests.conftest import TINY

    dp = dict(TINY, **{"train.dp_epsilon": 8.0, "train.dp_delta": 1e-4})
    with pytest.raises(ConfigError, match="causal language models"):
        pretrain(lm_data, tmp_path / "bert", arch="bert", overrides=dp, max_steps=5, progress=False)
    with pytest.raises(ConfigError, match="delta"):
        pretrain(
            lm_data, tmp_path / "d", overrides={**dp, "train.dp_delta": 0.5}, max_steps=5, progress=False
        )
    assert not (tmp_path / "bert").exists() and not (tmp_path / "d").exists()


def test_dp_pretraining_resumes_exactly(lm_data, tmp_path):
    """The Poisson draws, the noise and the accountant continue where the checkpoint left them."""
    from tests.conftest import TINY
    from tests.runs import assert_resume_is_exact

    overrides = dict(TINY, **{"train.eval_every": 3, "train.eval_tokens": 256, "model.n_layer": 1})
    overrides.update({"train.dp_epsilon": 8.0, "train.dp_delta": 1e-4})
    assert_resume_is_exact(lm_data, tmp_path, overrides=overrides, steps=6, stop_after=3)
    spent = [
        json.loads(ln).get("dp_epsilon")
        for ln in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [e for e in spent if e is not None][-1] <= 8.0
