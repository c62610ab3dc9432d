"""Distilling a fine-tuned classifier: batches carry their own teacher logits, a smaller student that loads and
predicts like any fine-tune, a student that follows the teacher (alpha 1) or the gold labels (alpha 0), the CLI."""

import json

import pytest
import torch
import torch.nn.functional as F

import lmforge
from lmforge.checkpoint import load_checkpoint, save_checkpoint
from lmforge.cli.main import main
from lmforge.compress.distill import distill_loss_sum
from lmforge.compress.distill_classify import DistillClassify, distill_classifier
from lmforge.tasks.classify.examples import read_examples
from lmforge.tasks.classify.pipeline import evaluate_classifier
from tests.tasks.test_classify import FIELDS, sentiment, tiny_backbones  # noqa: F401 (fixtures)

# A student several times smaller than the teacher (a 2x32 BERT, ~32k parameters): ~6k parameters.
SMALL_GPT = {
    "model.n_layer": 1,
    "model.n_head": 2,
    "model.n_embd": 16,
    "optim.lr": 3e-3,
    "train.batch_size": 16,
}
SMALL_LSTM = {"model.n_embd": 16, "model.n_hidden": 16, "optim.lr": 3e-3, "train.batch_size": 16}


@pytest.fixture(scope="module")
def teacher(sentiment, tiny_backbones, tmp_path_factory):
    run = tmp_path_factory.mktemp("teacher") / "run"
    result = lmforge.finetune(
        "classify",
        str(tiny_backbones["bert"]),
        sentiment / "train.tsv",
        run,
        dev=sentiment / "dev.tsv",
        fields=FIELDS,
        epochs=4,
        batch_size=16,
        lr=3e-3,
        progress=False,
    )
    assert result.metrics["val_accuracy"] > 0.9
    return run


@pytest.fixture(scope="module")
def liar(teacher, tmp_path_factory):
    """The teacher with its head replaced: whatever the text, logits (2, -2) in favour of "neg"."""
    model, tokenizer, config = load_checkpoint(teacher / "best")
    neg = config["model"]["labels"].index("neg")
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(-2.0)
        model.head.bias[neg] = 2.0
    return save_checkpoint(tmp_path_factory.mktemp("liar") / "ckpt", model, tokenizer, config)


def test_batches_carry_the_teacher_logits_of_their_own_examples():
    class Encoder:  # ids = the row's number, so a batch shows which rows it drew
        @staticmethod
        def batch(rows):
            ids = torch.tensor([[r] for r, _ in rows])
            return ids, torch.ones_like(ids), torch.zeros_like(ids)

    n = 10
    rows = [(i, [0]) for i in range(n)]
    teacher_logits = torch.arange(n, dtype=torch.float).unsqueeze(1).repeat(1, 3)
    objective = DistillClassify(rows, torch.arange(n) % 3, Encoder(), 4, teacher_logits, 2.0, 0.5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):  # across an epoch boundary
        ids, _, _, y, t = objective.next_batch(gen)
        assert torch.equal(t[:, 0], ids[:, 0].float()) and torch.equal(y, ids[:, 0] % 3)


def test_the_loss_weighs_teacher_and_gold_by_alpha():
    s, t = torch.randn(6, 3), torch.randn(6, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    assert distill_loss_sum(s, t, y, 2.0, 0.0).item() == pytest.approx(
        F.cross_entropy(s, y, reduction="sum").item()
    )
    soft = F.kl_div(F.log_softmax(s / 3, -1), F.softmax(t / 3, -1), reduction="sum")
    assert distill_loss_sum(s, t, y, 3.0, 1.0).item() == pytest.approx(9 * soft.item(), rel=1e-5)


def test_the_student_is_a_smaller_ordinary_classifier(teacher, sentiment, tmp_path):
    result = distill_classifier(
        teacher,
        sentiment / "train.tsv",
        tmp_path / "s",
        "test",
        dev=sentiment / "dev.tsv",
        epochs=4,
        overrides=SMALL_GPT,
        progress=False,
    )
    assert result.metrics["val_accuracy"] > 0.8  # chance is about 0.5
    student = lmforge.load(tmp_path / "s")
    assert student.model.num_params() * 3 < lmforge.load(teacher).model.num_params()
    assert student.config["data"]["distilled_from"]["alpha"] == 0.5
    clf = lmforge.pipeline("sentiment-analysis", model=tmp_path / "s" / "best")
    assert {p["label"] for p in clf(["the film was superb", "an awful dull story"])} <= {"neg", "pos"}
    assert evaluate_classifier(tmp_path / "s", sentiment / "dev.tsv")["accuracy"] > 0.8


@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_alpha_one_learns_the_teachers_label_alpha_zero_the_gold_one(alpha, liar, sentiment, tmp_path):
    distill_classifier(
        liar,
        sentiment / "train.tsv",
        tmp_path / "s",
        "lstm",
        epochs=3,
        overrides=SMALL_LSTM,
        temperature=2.0,
        alpha=alpha,
        progress=False,
    )
    dev = read_examples(sentiment / "dev.tsv", FIELDS)
    preds = [p["label"] for p in lmforge.pipeline("classify", model=tmp_path / "s")([ex.text for ex in dev])]
    gold = [ex.labels[0] for ex in dev]
    assert 0.3 < gold.count("pos") / len(gold) < 0.7
    if alpha == 1.0:  # the soft targets alone: "neg" for everything, as the teacher says
        assert preds.count("neg") / len(preds) > 0.95
    else:  # the gold labels alone: the teacher is ignored
        assert sum(p == g for p, g in zip(preds, gold)) / len(gold) > 0.75


def test_cli_distill_classify_report_predict_evaluate(teacher, sentiment, tmp_path, capsys):
    out = tmp_path / "s"
    argv = [
        "distill",
        "--teacher",
        str(teacher),
        "--student-preset",
        "bert-test",
        "--train",
        str(sentiment / "train.tsv"),
        "--dev",
        str(sentiment / "dev.tsv"),
        "--out",
        str(out),
        "--text-field",
        "sentence",
        "--epochs",
        "2",
        "--temperature",
        "3",
        "--quiet",
        "--json",
    ]
    argv += [x for k, v in SMALL_GPT.items() for x in (f"--{k}", str(v))]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 50 and result["temperature"] == 3.0
    for side in ("teacher", "student"):
        assert set(result[side]) >= {"parameters", "accuracy", "macro_f1", "examples_per_s"}
        assert result[side]["examples_per_s"] > 0 and 0 <= result[side]["macro_f1"] <= 1
    assert result["teacher"]["accuracy"] > 0.9
    assert result["student"]["parameters"] < result["teacher"]["parameters"]

    texts = tmp_path / "texts.txt"
    texts.write_text("a superb story\nboring acting\n", encoding="utf-8")
    assert main(["predict", str(out), "--task", "classify", "--input", str(texts), "--json"]) == 0
    assert all(
        json.loads(ln)["prediction"]["label"] in ("neg", "pos") for ln in capsys.readouterr().out.splitlines()
    )
    assert (
        main(["evaluate", str(out), "--task", "classify", "--data", str(sentiment / "dev.tsv"), "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["examples"] == 100

    # the printed table: a row per model; without --dev the accuracy columns are "-"
    assert (
        main(
            [
                *argv[:7],
                "--out",
                str(tmp_path / "t"),
                "--max-steps",
                "3",
                "--text-field",
                "sentence",
                "--quiet",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert "examples/s" in lines[1] and "dev accuracy" in lines[1]
    assert lines[2].split()[0] == "teacher" and lines[3].split()[0] == "student" and " - " in lines[3]


def test_cli_distill_classify_rejects_bad_input(teacher, tiny_backbones, sentiment, tmp_path, capsys):
    """One error line and no run directory for each."""
    train = str(sentiment / "train.tsv")
    base = ["distill", "--student-preset", "test", "--max-steps", "2", "--quiet", "--text-field", "sentence"]
    cases = [
        (["--teacher", str(tiny_backbones["gpt"]), "--train", train], "fine-tuned classifier"),
        (["--teacher", str(teacher), "--train", train, "--temperature", "0"], "--temperature"),
        (["--teacher", str(teacher), "--train", train, "--alpha", "-0.1"], "--alpha"),
        (["--teacher", str(teacher), "--train", train, "--alpha", "1.5"], "--alpha"),
        (
            ["--teacher", str(teacher), "--data", str(tmp_path)],
            "--text-field",
        ),  # a classify option with --data
        (
            ["--teacher", str(teacher), "--train", train, "--student-preset", "zaremba-small"],
            "bert or gpt preset",
        ),
        (["--teacher", str(teacher)], "--data"),
    ]
    for i, (extra, expected) in enumerate(cases):
        assert main([*base, *extra, "--out", str(tmp_path / f"o{i}")]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and expected in err[0], err
    # a classifier teacher on the language-model path says what to give instead
    assert (
        main(
            [
                "distill",
                "--teacher",
                str(teacher),
                "--student-preset",
                "test",
                "--data",
                str(tmp_path),
                "--out",
                str(tmp_path / "lm"),
            ]
        )
        != 0
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--train" in err[0]
    assert (
        not any((tmp_path / f"o{i}").exists() for i in range(len(cases))) and not (tmp_path / "lm").exists()
    )
