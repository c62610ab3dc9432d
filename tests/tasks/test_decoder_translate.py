"""Translation with a decoder-only model: a tiny pretrained GPT fine-tuned on "source → target" prompts (a copy task)
with the loss on the target only, then decoded greedily and with beams through LM.transduce and the CLI."""

import json
import random

import pytest
import torch

import lmforge
from lmforge.cli.main import main
from lmforge.errors import ConfigError, DataError
from lmforge.tasks.translate.pairs import Pair, read_pairs
from lmforge.tasks.translate.prompts import PairPrompt
from lmforge.train.labels import IGNORE_INDEX
from lmforge.train.objectives import collate_labelled as collate
from tests.conftest import TINY

LETTERS = (
    "abcdefhk"  # characters the pretraining corpus (tests/conftest.py) has, so the char tokenizer knows them
)


def copy_pairs(n: int, seed: int) -> str:
    r = random.Random(seed)
    lines = []
    for _ in range(n):
        text = " ".join(r.choice(LETTERS) for _ in range(r.randint(2, 4)))
        lines.append(f"{text}\t{text}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def gpt(char_data, tmp_path_factory):
    """A tiny GPT pretrained for 20 steps on the character corpus (a few seconds)."""
    out = tmp_path_factory.mktemp("decoder-translate") / "gpt"
    overrides = {**TINY, "model.n_embd": 64, "model.n_head": 4, "train.threads": 1, "train.log_every": 10}
    lmforge.pretrain(char_data, out, overrides=overrides, max_steps=20, progress=False)
    return out


@pytest.fixture(scope="module")
def copier(gpt):
    folder = gpt.parent
    (folder / "train.tsv").write_text(copy_pairs(300, 0), encoding="utf-8")
    (folder / "dev.tsv").write_text(copy_pairs(20, 1), encoding="utf-8")
    result = lmforge.finetune(
        "translate",
        str(gpt),
        folder / "train.tsv",
        folder / "run",
        dev=folder / "dev.tsv",
        epochs=20,
        lr=3e-3,
        batch_size=16,
        overrides={"train.threads": 1, "train.log_every": 50},
        progress=False,
    )
    return folder, result


def test_the_loss_covers_the_target_only_and_long_sources_lose_their_end(gpt):
    tok = lmforge.load(gpt).tokenizer
    prompt = PairPrompt.for_tokenizer(tok)
    assert prompt.separator == "\n"  # the corpus has newlines but no "=" or ">"
    rows = prompt.training_rows(tok, [Pair("a b c", "c b a"), Pair("d e", "h")], 32, "pairs.tsv")
    x, y = collate(rows, tok.eos_id)  # the tensors the training objective feeds the model
    assert tok.decode(x[0].tolist(), skip_special_tokens=False) == "<|eos|>a b c\nc b a"
    prompt_len = len(prompt.prompt_ids(tok, "a b c"))  # <|eos|>, 5 characters, the separator
    assert prompt_len == 7
    assert (y[0, : prompt_len - 1] == IGNORE_INDEX).all()  # no loss anywhere on the prompt...
    assert y[0, prompt_len - 1 :].tolist() == tok.encode("c b a") + [
        tok.eos_id
    ]  # ...all of it on target and end
    assert (
        tok.decode([t for t in y[1].tolist() if t != IGNORE_INDEX], skip_special_tokens=False) == "h<|eos|>"
    )
    # Over the block: the source is cut from its end, the target is kept whole.
    ((ids, labels),) = prompt.training_rows(tok, [Pair("a b c d e f", "f e d c b a")], 16, "pairs.tsv")
    assert len(ids) == 16 and tok.decode(ids, skip_special_tokens=False) == "<|eos|>a b\nf e d c b a"
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]) == "f e d c b a"
    with pytest.raises(
        DataError, match=r"pairs\.tsv: pair 2 has a target of 15 tokens; .* context of 16 tokens"
    ):
        prompt.training_rows(tok, [Pair("a", "b"), Pair("a", "a b c d e f h k")], 16, "pairs.tsv")


def test_the_fine_tuned_gpt_copies_greedily_and_with_beams(copier):
    folder, result = copier
    assert result.metrics["val_bleu"] > 80, result.metrics
    lm = lmforge.load(result.best)
    assert lm.config["arch"] == "gpt"
    assert lm.config["data"]["pair_prompt"] == {"separator": "\n", "target_room": 8}  # "a b c d" and its end
    pairs = read_pairs(folder / "train.tsv")[:40]
    sources = [p.source for p in pairs]
    for outputs in (lm.transduce(sources), lm.transduce(sources, num_beams=3)):
        right = sum(o == p.target for o, p in zip(outputs, pairs))
        assert right >= 0.8 * len(pairs), list(zip(sources, outputs))
    assert lm.transduce(sources, num_beams=1) == lm.transduce(sources)
    two = lm.transduce("a b c", num_beams=3, num_return_sequences=2)
    assert len(two) == 2 and two[0] == lm.transduce("a b c", num_beams=3)
    torch.manual_seed(0)  # sampling runs too
    assert isinstance(lm.transduce("a b", temperature=1.0, seed=1), str)


def test_cli_finetunes_evaluates_and_predicts_with_a_gpt(copier, gpt, tmp_path, capsys):
    folder, result = copier
    test = tmp_path / "test.tsv"
    test.write_text(copy_pairs(30, 2), encoding="utf-8")
    for beams in ("1", "3"):
        assert (
            main(
                [
                    "evaluate",
                    str(folder / "run"),
                    "--task",
                    "translate",
                    "--data",
                    str(test),
                    "--num-beams",
                    beams,
                    "--json",
                ]
            )
            == 0
        )
        scores = json.loads(capsys.readouterr().out)
        assert scores["bleu"] > 60 and scores["chrf"] > 60 and scores["pairs"] == 30, scores
    assert main(["evaluate", str(folder / "run"), "--task", "summarize", "--data", str(test), "--json"]) == 0
    assert {"rouge1", "rouge2", "rougeL"} <= set(json.loads(capsys.readouterr().out))
    sources = tmp_path / "sources.txt"
    long = " ".join(LETTERS * 5)  # 79 characters: LM.transduce refuses it, evaluate and predict cut its end
    sources.write_text(f"a b c\n\nk h\n{long}\n", encoding="utf-8")
    assert (
        main(
            [
                "predict",
                str(folder / "run"),
                "--task",
                "translate",
                "--input",
                str(sources),
                "--num-beams",
                "2",
                "--json",
            ]
        )
        == 0
    )
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [ln["source"] for ln in lines] == ["a b c", "k h", long]
    assert sum(ln["output"] == ln["source"] for ln in lines) >= 1
    with pytest.raises(ConfigError, match="1 of 1 prompt.* longer than the model's context of 32 tokens"):
        lmforge.load(result.best).transduce(long)
    # `lmforge finetune --task translate --model GPT-CHECKPOINT` from the command line.
    (tmp_path / "few.tsv").write_text(copy_pairs(32, 3), encoding="utf-8")
    argv = [
        "finetune",
        "--task",
        "translate",
        "--model",
        str(gpt),
        "--train",
        str(tmp_path / "few.tsv"),
        "--dev",
        str(tmp_path / "few.tsv"),
        "--out",
        str(tmp_path / "cli-run"),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--json",
        "--quiet",
        "--train.threads",
        "1",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 2 and {"val_bleu", "val_chrf", "val_loss"} <= set(out)
    # A gpt that was not fine-tuned on pairs has no prompt format to continue: one clear error.
    assert main(["evaluate", str(gpt), "--task", "translate", "--data", str(test)]) == 2
    assert "neither an encoder-decoder (seq2seq) nor a gpt fine-tuned" in capsys.readouterr().err
