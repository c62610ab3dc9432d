"""DP-SGD fine-tuning (train/privacy.py, `finetune --dp-epsilon`): the spent epsilon stays within the target, the
model beats chance on an easy task, and bad privacy parameters or models Opacus cannot train are refused."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

pytest.importorskip("opacus")

from lmforge.checkpoint import save_checkpoint  # noqa: E402
from lmforge.cli.main import main  # noqa: E402
from lmforge.errors import ConfigError  # noqa: E402
from lmforge.models.registry import build_model  # noqa: E402
from lmforge.tasks.classify.examples import Fields  # noqa: E402
from lmforge.tasks.finetune import finetune  # noqa: E402
from lmforge.tasks.pipeline import pipeline  # noqa: E402
from lmforge.tokenizers import Tokenizer  # noqa: E402
from tests.tasks.test_classify import reviews as keyword_reviews  # noqa: E402


def reviews(n: int, seed: int) -> list[tuple[str, str]]:
    return keyword_reviews(n, seed, fill=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dp")
    for name, n, seed in (("train.tsv", 1000, 0), ("dev.tsv", 200, 1)):
        rows = ["sentence\tlabel"] + [f"{t}\t{y}" for t, y in reviews(n, seed)]
        (folder / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    tok = Tokenizer.train("wordpiece", [t for t, _ in reviews(300, 5)], vocab_size=120, min_frequency=1)
    for arch, cfg in (
        ("bert", dict(n_layer=1, n_head=2, n_embd=32, block_size=16, dropout=0.0)),
        ("gpt", dict(n_layer=1, n_head=2, n_embd=32, block_size=16)),
    ):
        torch.manual_seed(0)
        model = build_model(arch, dict(cfg, vocab_size=tok.vocab_size))
        save_checkpoint(folder / arch, model, tok, {"arch": arch, "model": dataclasses.asdict(model.config)})
    return folder


def test_dp_finetune_spends_at_most_its_budget_and_learns(data):
    """A small BiGRU from scratch (Opacus's DPGRU stands in for nn.GRU, with the same weight names): 40 DP-SGD steps
    at epsilon 8 on 1,000 examples where one word decides the label."""
    result = finetune(
        "classify",
        "gru",
        data / "train.tsv",
        data / "run",
        dev=data / "dev.tsv",
        fields=Fields(text="sentence"),
        epochs=2,
        batch_size=50,
        lr=0.03,
        max_length=16,
        progress=False,
        dp_epsilon=8.0,
        overrides={"model.encoder": {"n_embd": 32, "n_hidden": 32}},
    )
    m = result.metrics
    assert 0 < m["dp_epsilon"] <= 8.0 and m["dp_delta"] == 1e-5
    assert m["val_accuracy"] > 0.7  # chance is 0.5
    card = (result.run_dir / "best" / "README.md").read_text(encoding="utf-8")
    assert "DP-SGD" in card and "epsilon" in card
    logged = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    spent = [r["dp_epsilon"] for r in logged if "dp_epsilon" in r]
    assert (
        spent == sorted(spent) and spent[-1] <= 8.0
    )  # reported as training goes, never more than the target
    pipe = pipeline(
        "text-classification", str(result.best)
    )  # the checkpoint is an ordinary classifier (nn.GRU weights)
    assert pipe(["the film was superb"])[0]["label"] == "pos"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dp-epsilon", "0"], "epsilon must be positive"),
        (["--dp-epsilon", "-1"], "epsilon must be positive"),
        (["--dp-epsilon", "8", "--dp-delta", "0.01"], "below 1/N"),
        (["--dp-epsilon", "8", "--train.grad_accum", "2"], "grad_accum"),
    ],
)
def test_bad_privacy_parameters_are_one_line(data, tmp_path, capsys, flags, message):
    args = [
        "finetune",
        "--task",
        "classify",
        "--model",
        str(data / "bert"),
        "--train",
        str(data / "train.tsv"),
    ]
    code = main([*args, "--out", str(tmp_path / "run"), "--text-field", "sentence", "--quiet", *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_layer_without_a_batch_dimension_is_refused_in_one_line():
    """A layer whose input has no batch dimension (here a position table broadcast over the batch, as GPT's was
    before it expanded its positions) leaves Opacus unable to tell examples apart: refused with a reason."""
    from lmforge.config import RunConfig
    from lmforge.train.objectives import ShuffledEpochs
    from lmforge.train.privacy import DPSGD, DPOptions

    class Broadcast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = torch.nn.Embedding(4, 3)
            self.out = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.out(x + self.pos(torch.arange(4)))

    cfg = RunConfig()
    cfg.train.batch_size, cfg.train.max_steps = 4, 10
    hook = DPSGD(DPOptions(epsilon=8), 100, cfg, ShuffledEpochs(100, 4))
    net = hook.prepare_model(Broadcast())
    model, optimizer = hook.wrap(net, torch.optim.SGD(net.parameters(), lr=0.1))
    model(torch.randn(3, 4, 3)).sum().backward()
    with pytest.raises(ConfigError, match="without a batch dimension"):
        optimizer.step()


def test_dp_is_for_classification_and_causal_lms_only(data, tmp_path):
    with pytest.raises(ConfigError, match="classify, nli, lm and chat"):
        finetune("ner", "lstm", data / "train.tsv", tmp_path / "ner", progress=False, dp_epsilon=8.0)


def test_dp_with_lora_trains_only_the_adapters_and_the_head(data, tmp_path):
    from lmforge.checkpoint import load_checkpoint

    result = finetune(
        "classify",
        str(data / "bert"),
        data / "train.tsv",
        tmp_path / "lora",
        fields=Fields(text="sentence"),
        epochs=0.5,
        batch_size=50,
        max_length=16,
        progress=False,
        dp_epsilon=3.0,
        lora=True,
    )
    assert 0 < result.metrics["dp_epsilon"] <= 3.0
    card = (result.run_dir / "latest" / "README.md").read_text(encoding="utf-8")
    assert "adapter dropout layers switched off" in card  # LoRA's dropout: off under DP-SGD
    trained, _, _ = load_checkpoint(result.run_dir / "latest")
    base, _, _ = load_checkpoint(data / "bert")
    assert torch.equal(
        trained.backbone.tok_emb.weight, base.tok_emb.weight
    )  # frozen backbone: public, unchanged


def test_lora_per_example_gradients_in_closed_form_equal_one_backward_per_example():
    """The closed-form rule registered for LoRA adapters gives each example's own gradient, as Opacus sees it."""
    import opacus

    from lmforge.train.lora import LoRALinear
    from lmforge.train.privacy import lora_grad_sample

    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(6, 5), r=2, alpha=4.0, dropout=0.0)
    torch.nn.init.normal_(layer.lora_B)  # B starts at zero; a non-zero B makes grad A non-zero too
    layer.base.requires_grad_(False)
    x = torch.randn(3, 4, 6)
    expected = []
    for n in range(3):
        layer.zero_grad()
        layer(x[n : n + 1]).pow(2).sum().backward()
        expected.append((layer.lora_A.grad.clone(), layer.lora_B.grad.clone()))
    opacus.grad_sample.register_grad_sampler(LoRALinear)(lora_grad_sample)
    private = opacus.GradSampleModule(layer, batch_first=True, loss_reduction="sum")
    with pytest.warns(UserWarning, match="Full backward hook"):  # x needs no gradient: expected here
        private(x).pow(2).sum().backward()
    for n, (grad_a, grad_b) in enumerate(expected):
        torch.testing.assert_close(layer.lora_A.grad_sample[n], grad_a)
        torch.testing.assert_close(layer.lora_B.grad_sample[n], grad_b)
