"""What every fine-tune task shares: --max-steps / --max-minutes on every task, and the default batch size (16 for
ner, 32 for the others)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import lmforge.cli.main as cli_main
from lmforge.checkpoint import save_checkpoint
from lmforge.errors import ConfigError
from lmforge.models.gpt import GPTConfig
from lmforge.models.registry import build_model
from lmforge.tasks.common import FineTuneOptions, finetune_config
from lmforge.tasks.finetune import TASKS
from lmforge.tokenizers import Tokenizer


def config(examples: int, batch_size: int = 32, **options):
    return finetune_config(
        "gpt", GPTConfig(), examples, FineTuneOptions(**options), lr=1e-4, batch_size=batch_size
    )


def test_the_task_default_batch_size_applies_unless_one_is_given():
    cfg = config(3_000, epochs=2, batch_size=16)  # ner's default: 188 steps per epoch
    assert cfg.train.batch_size == 16 and cfg.train.max_steps == 376 and cfg.train.eval_every == 188
    assert cfg.optim.warmup_steps == 37
    assert config(3_000, epochs=2).train.max_steps == 188  # the other tasks' 32
    given = finetune_config(
        "gpt", GPTConfig(), 3_000, FineTuneOptions(epochs=2, batch_size=32), lr=1e-4, batch_size=16
    )
    assert given.train.batch_size == 32 and given.train.max_steps == 188


def test_max_steps_replaces_the_epochs():
    cfg = config(3_000, epochs=2, max_steps=50)
    assert cfg.train.max_steps == 50 and cfg.optim.warmup_steps == 5 and cfg.train.eval_every == 50
    assert config(3_000, epochs=2, max_steps=50, overrides={"train.max_steps": 7}).train.max_steps == 7
    more = config(100, epochs=1, batch_size=10, max_steps=40)  # max_steps may go past the epochs
    assert more.train.max_steps == 40 and more.train.eval_every == 10
    with pytest.raises(ConfigError, match="--max-steps must be at least 1"):
        FineTuneOptions(max_steps=0).validate()


@pytest.fixture(scope="module")
def tiny_gpt(tmp_path_factory):
    """A random GPT with a character tokenizer that can spell the chat markers."""
    tok = Tokenizer.train(
        "char", ["<|system|>\n<|user|>\n<|assistant|>\n", "abcdefghijklmnopqrstuvwxyz 0123456789."]
    )
    torch.manual_seed(0)
    model = build_model("gpt", dict(n_layer=1, n_head=2, n_embd=16, block_size=96, vocab_size=tok.vocab_size))
    folder = tmp_path_factory.mktemp("gpt")
    return save_checkpoint(
        folder / "gpt", model, tok, {"arch": "gpt", "model": dataclasses.asdict(model.config)}
    )


def test_every_task_accepts_the_step_limits(monkeypatch):
    monkeypatch.setattr(cli_main, "VERB_MODULES", ["finetune"])
    parser = cli_main.build_parser()
    for task in TASKS:
        argv = ["finetune", "--task", task, "--model", "m", "--train", "t", "--out", "o"]
        args = parser.parse_args([*argv, "--max-steps", "3", "--max-minutes", "1.5"])
        assert (args.max_steps, args.max_minutes, args.batch_size) == (3, 1.5, None)


def finetune_steps(task: str, model: str, train, out, steps: int, capsys) -> dict:
    """`lmforge finetune --task TASK ... --max-steps STEPS` through the CLI; its JSON summary."""
    argv = ["finetune", f"--task={task}", f"--model={model}", f"--train={train}", f"--out={out}"]
    assert cli_main.main([*argv, f"--max-steps={steps}", "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


def test_chat_and_classify_stop_at_max_steps(tiny_gpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli_main, "VERB_MODULES", ["finetune"])
    convo = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    chats = tmp_path / "chats.jsonl"
    chats.write_text((json.dumps(convo) + "\n") * 40, encoding="utf-8")
    summary = finetune_steps("chat", str(tiny_gpt), chats, tmp_path / "chat", 3, capsys)
    assert summary["steps"] == 3 and summary["stop_reason"] == "max_steps"
    labelled = tmp_path / "train.tsv"
    rows = [f"{'good' if i % 2 else 'bad'} film number {i}\t{'pos' if i % 2 else 'neg'}" for i in range(64)]
    labelled.write_text("text\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    summary = finetune_steps("classify", "lstm", labelled, tmp_path / "clf", 2, capsys)
    assert summary["steps"] == 2 and summary["stop_reason"] == "max_steps"


def test_ner_defaults_to_batch_16_and_other_tasks_to_32(tmp_path):
    import lmforge
    from lmforge.checkpoint import read_config, resolve_checkpoint

    conll = tmp_path / "train.txt"
    conll.write_text("".join(f"John B-PER\nsaw O\nParis{i} B-LOC\n\n" for i in range(40)), encoding="utf-8")
    run = lmforge.finetune("ner", "lstm", conll, tmp_path / "ner", max_steps=1, progress=False)
    assert read_config(resolve_checkpoint(run.run_dir))["run"]["train"]["batch_size"] == 16
    labelled = tmp_path / "train.tsv"
    labelled.write_text("text\tlabel\n" + "".join(f"good {i}\tpos\nbad {i}\tneg\n" for i in range(20)))
    run = lmforge.finetune("classify", "lstm", labelled, tmp_path / "clf", max_steps=1, progress=False)
    assert read_config(resolve_checkpoint(run.run_dir))["run"]["train"]["batch_size"] == 32
