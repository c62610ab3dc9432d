"""Resuming fine-tunes: an interrupted run continued with --resume equals the uninterrupted one (metrics, best
checkpoint, final weights); a run directory the command cannot continue is refused in one line."""

import json
import signal

import pytest
import torch

import lmforge
from lmforge import checkpoint as ckpt
from lmforge.cli.main import main
from lmforge.errors import CheckpointError, ConfigError
from lmforge.tasks.classify.examples import Fields
from lmforge.train.trainer import Trainer
from tests.tasks.test_classify import FIELDS, sentiment, tiny_backbones  # noqa: F401 (fixtures)
from tests.tasks.test_translate import FAST, translation_pairs

SMALL = {"train.threads": 1, "train.log_every": 1}  # 4 steps an epoch on 64 examples, validated every epoch


def records(run) -> list[dict]:
    """The run's metrics without the wall-clock ones, which no two runs share."""
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")} for r in rows]


def assert_resume_is_exact(monkeypatch, capsys, tmp_path, finetune, stop_after: int):
    """Run `finetune(out, resume=...)` whole; run it again, interrupted after step `stop_after` as Ctrl-C would,
    then resumed: the metrics, the best checkpoint and the final weights must be the same. (An interrupted run
    saves without validating, so `stop_after` may be any step: a validation step or one in between.)"""
    full, part = tmp_path / "full", tmp_path / "part"
    finetune(full, resume=False)
    with monkeypatch.context() as m:
        real = Trainer._train_step

        def train_step(self):
            loss = real(self)
            if self.step + 1 == stop_after:  # the loop counts the step once this returns
                self.stop_signal = signal.SIGINT
            return loss

        m.setattr(Trainer, "_train_step", train_step)
        with pytest.raises(KeyboardInterrupt):
            finetune(part, resume=False)
    assert "continue with the same `lmforge finetune` command plus --resume" in capsys.readouterr().out
    assert ckpt.pointed(part, "latest").name == f"ckpt-{stop_after:07d}"
    result = finetune(part, resume=True)
    assert result.step > stop_after and records(part) == records(full)
    assert ckpt.pointed(part, "best").name == ckpt.pointed(full, "best").name
    assert (
        ckpt.pointed(part, "latest") / "train_state.pt"
    ).is_file()  # keep_last=1 keeps what resuming needs
    a, b = lmforge.load(full).model.state_dict(), lmforge.load(part).model.state_dict()
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)


def classify(sentiment, model, overrides=SMALL, **kw):
    def run(out, resume):
        return lmforge.finetune(
            "classify",
            str(model),
            sentiment / "train.tsv",
            out,
            dev=sentiment / "dev.tsv",
            fields=FIELDS,
            epochs=3,
            max_examples=64,
            batch_size=16,
            lr=3e-3,
            overrides=overrides,
            progress=False,
            resume=resume,
            **kw,
        )

    return run


def test_classify_resume_equals_the_uninterrupted_run(
    sentiment, tiny_backbones, tmp_path, monkeypatch, capsys
):
    assert_resume_is_exact(
        monkeypatch, capsys, tmp_path, classify(sentiment, tiny_backbones["bert"]), stop_after=6
    )  # mid-epoch: validated at 4 and 8 only, so the interrupted run must not validate at 6


def test_lora_resume_restores_the_adapters_not_the_merged_weights(
    sentiment,
    tiny_backbones,
    tmp_path,
    monkeypatch,
    capsys,
):
    run = classify(sentiment, tiny_backbones["bert"], {**SMALL, "train.eval_every": 1}, lora=True, lora_r=4)
    # Stopped mid-epoch: the data position and the adapters' dropout RNG carry over too.
    assert_resume_is_exact(monkeypatch, capsys, tmp_path, run, stop_after=6)
    # The frozen weights come from --model again: another backbone of the same shape is refused.
    other = lmforge.load(tiny_backbones["bert"])
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(0.01)
    folder = ckpt.save_checkpoint(tmp_path / "other", other.model, other.tokenizer, other.config)
    with pytest.raises(CheckpointError, match="not the one the run being resumed started from"):
        classify(sentiment, folder, lora=True, lora_r=4)(tmp_path / "part", resume=True)


def test_translation_resume_equals_the_uninterrupted_run(tmp_path, monkeypatch, capsys):
    (tmp_path / "train.tsv").write_text(translation_pairs(48, 0), encoding="utf-8")
    (tmp_path / "dev.tsv").write_text(translation_pairs(8, 1), encoding="utf-8")

    def run(
        out, resume
    ):  # a BPE tokenizer trained on the pairs each time: the resumed run must get the same one
        return lmforge.finetune(
            "translate",
            "seq2seq-test",
            tmp_path / "train.tsv",
            out,
            dev=tmp_path / "dev.tsv",
            epochs=2,
            batch_size=16,
            lr=3e-3,
            overrides={**FAST, "train.log_every": 1},
            progress=False,
            resume=resume,
        )

    assert_resume_is_exact(monkeypatch, capsys, tmp_path, run, stop_after=3)


@pytest.fixture(scope="module")
def classify_run(sentiment, tiny_backbones, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "run"
    lmforge.finetune(
        "classify",
        str(tiny_backbones["bert"]),
        sentiment / "train.tsv",
        out,
        fields=FIELDS,
        epochs=1,
        max_examples=32,
        batch_size=16,
        overrides=SMALL,
        progress=False,
    )
    return out


def test_a_run_the_command_cannot_continue_is_refused_in_one_line(
    classify_run,
    sentiment,
    tiny_backbones,
    tmp_path,
    capsys,
):
    def resume(**kw):
        args = dict(fields=FIELDS, epochs=1, max_examples=32, batch_size=16, overrides=SMALL, progress=False)
        return lmforge.finetune(
            kw.pop("task", "classify"),
            str(kw.pop("model", tiny_backbones["bert"])),
            kw.pop("train", sentiment / "train.tsv"),
            classify_run,
            resume=True,
            **{**args, **kw},
        )

    with pytest.raises(
        CheckpointError, match="holds a classify fine-tune, not nli; resume it with --task classify"
    ):
        resume(task="nli", fields=Fields(text="sentence", pair="sentence", label="label"))
    with pytest.raises(CheckpointError, match=r"trained without --lora, this command asks for --lora \(r 8"):
        resume(lora=True)
    three = tmp_path / "three.tsv"
    three.write_text("sentence\tlabel\ngood film\tpos\nbad film\tneg\nsome film\tmeh\n", encoding="utf-8")
    with pytest.raises(
        CheckpointError, match=r"labels \(meh, neg, pos\) differ from those of the run being resumed"
    ):
        resume(train=three)
    with pytest.raises(CheckpointError, match="the model differs from the run being resumed"):
        resume(model="lstm")
    with pytest.raises(CheckpointError, match="the training data has 16 examples, the run being resumed 32"):
        resume(max_examples=16)
    with pytest.raises(ConfigError, match="--folds"):
        resume(folds=2)
    assert (
        len(ckpt.list_checkpoints(classify_run)) == 1 and "step" in records(classify_run)[-1]
    )  # left as it was

    fresh = tmp_path / "fresh"
    code = main(
        [
            "finetune",
            "--task",
            "classify",
            "--model",
            "lstm",
            "--train",
            str(sentiment / "train.tsv"),
            "--out",
            str(fresh),
            "--text-field",
            "sentence",
            "--resume",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "has no checkpoint to resume from" in err
    code = main(
        [
            "finetune",
            "--task",
            "classify",
            "--model",
            str(tiny_backbones["bert"]),
            "--train",
            str(sentiment / "train.tsv"),
            "--out",
            str(classify_run),
            "--text-field",
            "sentence",
            "--quiet",
        ]
    )
    assert code == 2 and "pass --resume to continue" in capsys.readouterr().err
