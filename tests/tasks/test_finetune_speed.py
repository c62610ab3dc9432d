"""Fine-tuning speed-ups, each against its off state: unpadded BERT batches (model.unpad)."""

import dataclasses
import json
import random

import pytest
import torch

import lmforge
from lmforge.checkpoint import save_checkpoint
from lmforge.models import bert as bert_module
from lmforge.models.bert import Bert, BertConfig, unpad_rows
from lmforge.models.classifier import Classifier, ClassifierConfig
from lmforge.models.registry import build_model
from lmforge.models.tagger import Tagger, TaggerConfig
from lmforge.tasks.classify.examples import Fields
from lmforge.tasks.common import resume_check
from lmforge.tokenizers import Tokenizer

WORDS = "the film was a good bad plot really quite story acting and music it lovely dull".split()


def padded_batch(seed: int = 0, vocab: int = 50, lengths=(9, 3, 6, 1)):
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    ids = torch.randint(1, vocab, (B, T), generator=g)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    types = (torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None] // 2).long() * mask
    return ids * mask, mask, types


def bert(dropout: float = 0.0) -> Bert:
    torch.manual_seed(0)
    return Bert(BertConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=dropout))


@pytest.mark.parametrize("steps", [0, 2, 16])
def test_unpadded_encoder_gives_the_padded_vectors_and_gradients(monkeypatch, steps):
    # 37 real tokens of 64: 2 sizes an octave runs 48 rows (11 of them padding), 16 runs 38, 0 runs 37.
    monkeypatch.setattr(bert_module, "UNPAD_STEPS_PER_OCTAVE", steps)
    model = bert()
    ids, mask, types = padded_batch(lengths=(16, 11, 7, 3))
    grads = {}
    for unpad in (False, True):
        model.zero_grad()
        hidden = model.encode(ids, mask, types, unpad=unpad)
        (hidden * mask[..., None]).square().sum().backward()
        grads[unpad] = ([p.grad.clone() for p in model.parameters() if p.grad is not None], hidden.detach())
    (g_pad, h_pad), (g_unpad, h_unpad) = grads[False], grads[True]
    real = mask.bool()
    torch.testing.assert_close(h_unpad[real], h_pad[real], atol=1e-5, rtol=1e-5)
    assert h_unpad[~real].abs().max() == 0  # padding comes back as zeros
    assert len(g_pad) == len(g_unpad)
    for a, b in zip(g_pad, g_unpad):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_unpadded_row_counts_come_from_a_short_list(monkeypatch):
    monkeypatch.setattr(bert_module, "UNPAD_STEPS_PER_OCTAVE", 16)
    sizes = {unpad_rows(n) for n in range(1, 4097)}
    assert all(unpad_rows(n) >= n and unpad_rows(n) <= n * 17 / 16 for n in range(1, 4097))
    assert len(sizes) == 32 + 16 * 7  # 1..32 exactly, then 16 sizes in each octave up to 4096
    monkeypatch.setattr(bert_module, "UNPAD_STEPS_PER_OCTAVE", 0)
    assert [unpad_rows(n) for n in (1, 37, 1000)] == [1, 37, 1000]


def test_unpad_runs_a_full_batch_and_attention_maps_as_they_are():
    model = bert().eval()
    ids, mask, types = padded_batch(lengths=(5, 5))
    torch.testing.assert_close(model.encode(ids, mask, types, unpad=True), model.encode(ids, mask, types))
    ids, mask, types = padded_batch()
    hidden, maps = model.encode(ids, mask, types, output_attentions=True, unpad=True)
    assert len(maps) == 2 and maps[0].shape == (4, 2, 9, 9)
    torch.testing.assert_close(hidden, model.encode(ids, mask, types, output_attentions=True)[0])


def test_unpad_trains_with_dropout_and_under_bf16_autocast():
    model = bert(dropout=0.1).train()
    ids, mask, types = padded_batch()
    model.encode(ids, mask, types, unpad=True).sum().backward()
    assert all(p.grad is not None for p in model.layers.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.eval().encode(ids, mask, types, unpad=True)
        ref = model.encode(ids, mask, types)
    real = mask.bool()
    torch.testing.assert_close(out[real].float(), ref[real].float(), atol=0.05, rtol=0.05)


@pytest.mark.parametrize("head", ["classifier", "tagger"])
def test_task_models_unpad_by_default_with_the_same_logits(head):
    enc = dataclasses.asdict(bert().config)
    cls, cfg_cls = (Classifier, ClassifierConfig) if head == "classifier" else (Tagger, TaggerConfig)
    logits = {}
    for unpad in (True, False):
        torch.manual_seed(0)
        cfg = cfg_cls(backbone="bert", encoder=enc, labels=["a", "b", "c"], vocab_size=50, unpad=unpad)
        logits[unpad] = cls(cfg).eval()(*padded_batch())
    assert cfg_cls().unpad is True
    real = padded_batch()[1].bool()
    pick = (lambda x: x) if head == "classifier" else (lambda x: x[real])
    torch.testing.assert_close(pick(logits[True]), pick(logits[False]), atol=1e-5, rtol=1e-5)


def test_resuming_ignores_how_the_model_computes():
    """A run saved before model.unpad existed (or with the other setting) still resumes."""

    class Objective:
        n_examples = 3

    tok = Tokenizer.train("wordpiece", [" ".join(WORDS)], vocab_size=60, min_frequency=1)
    cfg = lmforge.config.RunConfig(arch="classifier", model=ClassifierConfig(labels=["a", "b"]))
    check = resume_check(cfg, {"task": "classify"}, tok, Objective(), "run")
    saved = json.loads(json.dumps(cfg.to_dict()))
    saved["data"], saved["tokenizer"] = {"task": "classify"}, {"sha256": tok.sha256()}
    del saved["model"]["unpad"]
    check(saved, {})  # no error
    saved["model"]["pooling"] = "mean"
    with pytest.raises(lmforge.errors.CheckpointError, match="pooling"):
        check(saved, {})


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speed")
    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 12))) for _ in range(120)]
    tok = Tokenizer.train("wordpiece", texts, vocab_size=120, min_frequency=1)
    torch.manual_seed(0)
    model = build_model(
        "bert", dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=tok.vocab_size)
    )
    ckpt = save_checkpoint(
        folder / "bert", model, tok, {"arch": "bert", "model": dataclasses.asdict(model.config)}
    )
    rows = ["sentence\tlabel"] + [f"{t}\t{'pos' if 'good' in t else 'neg'}" for t in texts]
    (folder / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    conll = []
    for t in texts[:60]:
        conll += [f"{w} X X {'B-MISC' if w in ('film', 'music') else 'O'}" for w in t.split()] + [""]
    (folder / "train.conll").write_text("\n".join(conll) + "\n", encoding="utf-8")
    return ckpt, folder


def train_losses(run) -> list[float]:
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [ln["loss"] for ln in lines if "loss" in ln and "val_loss" not in ln]


@pytest.mark.parametrize("task", ["classify", "ner"])
def test_fine_tuning_losses_are_the_same_with_and_without_unpadding(task, tiny_bert, tmp_path):
    """Without dropout (whose masks are drawn over fewer values when unpadded) the runs match step for step."""
    ckpt, folder = tiny_bert
    losses = {}
    for unpad in (True, False):
        run = tmp_path / f"run-{unpad}"
        lmforge.finetune(
            task,
            str(ckpt),
            folder / ("train.tsv" if task == "classify" else "train.conll"),
            run,
            fields=Fields(text="sentence", label="label") if task == "classify" else None,
            epochs=2,
            batch_size=8,
            lr=1e-3,
            overrides={
                "model.unpad": unpad,
                "model.dropout": 0.0,
                "model.encoder": {"dropout": 0.0},
                "train.log_every": 1,
            },
            progress=False,
        )
        losses[unpad] = train_losses(run)
        config = json.loads((run / "latest" / "config.json").read_text())
        assert config["model"]["unpad"] is unpad
    assert len(losses[True]) >= 10
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)


def test_dp_sgd_fine_tunes_padded(tiny_bert, tmp_path):
    """Per-example gradients need the batch dimension of every activation: DP-SGD turns unpadding off."""
    pytest.importorskip("opacus")
    ckpt, folder = tiny_bert
    lmforge.finetune(
        "classify",
        str(ckpt),
        folder / "train.tsv",
        tmp_path / "dp",
        fields=Fields(text="sentence", label="label"),
        max_steps=2,
        batch_size=8,
        dp_epsilon=8.0,
        progress=False,
    )
    assert json.loads((tmp_path / "dp" / "latest" / "config.json").read_text())["model"]["unpad"] is False


def test_a_dev_set_encoded_once_scores_as_one_encoded_at_each_validation(tiny_bert):
    from lmforge.checkpoint import load_checkpoint
    from lmforge.tasks.classify.encoding import TextEncoder
    from lmforge.tasks.classify.examples import read_examples
    from lmforge.tasks.classify.run import score_examples

    ckpt, folder = tiny_bert
    pretrained, tok, _ = load_checkpoint(ckpt)
    enc = dataclasses.asdict(pretrained.config)
    torch.manual_seed(0)
    model = Classifier(ClassifierConfig(encoder=enc, labels=["neg", "pos"], vocab_size=tok.vocab_size))
    encoder = TextEncoder(tok, "bert", 32)
    examples = read_examples(folder / "train.tsv", Fields(text="sentence", label="label"))[:40]
    rows = [encoder(ex.text, ex.pair) for ex in examples]
    cpu = torch.device("cpu")
    assert score_examples(model, encoder, examples, cpu, rows=rows) == score_examples(
        model, encoder, examples, cpu
    )
