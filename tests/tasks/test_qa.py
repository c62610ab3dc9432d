"""Extractive QA: SQuAD reading and scoring, sliding windows, n-best span search, fine-tuning, pipeline."""

import dataclasses
import json
import random

import numpy as np
import pytest
import torch

import lmforge
from lmforge.checkpoint import save_checkpoint
from lmforge.errors import ConfigError, DataError
from lmforge.models.registry import build_model
from lmforge.tasks.qa.pipeline import QuestionAnsweringPipeline, evaluate_qa
from lmforge.tasks.qa.squad import QAExample, exact_match, f1_score, read_squad, squad_scores
from lmforge.tasks.qa.windows import Window, best_spans, make_windows
from lmforge.tokenizers import Tokenizer

WORDS = (
    "the game was played on a sunny day and many fans came to see it in the big stadium of the city".split()
)
QUESTION = "what was the number ?"


def squad(n: int, seed: int) -> dict:
    """Contexts of 8-40 words with one two-digit number somewhere; the question asks for it."""
    rng = random.Random(seed)
    paras = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(8, 40))]
        num = str(rng.randint(10, 99))
        words.insert(rng.randint(0, len(words)), num)
        ctx = " ".join(words)
        paras.append(
            {
                "context": ctx,
                "qas": [
                    {
                        "id": f"{seed}-{i}",
                        "question": QUESTION,
                        "answers": [{"text": num, "answer_start": ctx.index(num)}],
                    }
                ],
            }
        )
    return {"version": "1.1", "data": [{"title": "numbers", "paragraphs": paras}]}


@pytest.fixture(scope="module")
def qa_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qa")
    (folder / "train.json").write_text(json.dumps(squad(300, 0)))
    (folder / "dev.json").write_text(json.dumps(squad(60, 1)))
    texts = [p["context"] for p in squad(300, 0)["data"][0]["paragraphs"]] + [QUESTION]
    tok = Tokenizer.train("wordpiece", texts, vocab_size=200, min_frequency=1)
    torch.manual_seed(0)
    model = build_model(
        "bert", dict(n_layer=2, n_head=2, n_embd=32, block_size=64, dropout=0.0, vocab_size=tok.vocab_size)
    )
    save_checkpoint(folder / "bert", model, tok, {"arch": "bert", "model": dataclasses.asdict(model.config)})
    return folder


def test_official_normalisation_and_scores():
    assert exact_match("The Denver Broncos!", "denver broncos") == 1.0
    # prediction "denver broncos team" vs "broncos": 1 common token, P = 1/3, R = 1, F1 = 2PR/(P+R) = 0.5
    assert f1_score("Denver Broncos team", "the Broncos") == pytest.approx(0.5)
    # Chinese is scored by characters: "北京大学" vs "北京": P = 2/4, R = 1, F1 = 2/3
    assert f1_score("北京大学", "北京。") == pytest.approx(2 / 3)
    examples = [
        QAExample("a", "q", "c", [{"text": "x y", "answer_start": 0}, {"text": "y", "answer_start": 2}])
    ]
    assert squad_scores({"a": "y"}, examples) == {"exact_match": 100.0, "f1": 100.0, "examples": 1}


def test_windows_hold_the_answer_and_map_back_to_characters(qa_data):
    tok = Tokenizer.load(qa_data / "bert")
    ctx = " ".join(["the city"] * 30 + ["42"] + ["the game"] * 10)
    ex = QAExample("x", QUESTION, ctx, [{"text": "42", "answer_start": ctx.index("42")}])
    windows = make_windows([ex], tok, block_size=24, doc_stride=8, with_answers=True)
    assert len(windows) > 5 and all(len(w.ids) <= 24 for w in windows)
    holding = [w for w in windows if w.start]
    assert holding, "some window must hold the answer"
    for w in holding:
        s, e = w.offsets[w.start - w.context_start][0], w.offsets[w.end - w.context_start][1]
        assert ctx[s:e] == "42"
    assert all(w.start == w.end == 0 for w in windows if w not in holding)
    with pytest.raises(DataError, match="no room"):
        make_windows(
            [QAExample("y", "what " * 30, ctx)], tok, block_size=24, doc_stride=8, with_answers=False
        )


def test_n_best_search_respects_order_and_length():
    ex = QAExample("e", "q", "aa bb cc dd", [])
    w = Window(0, [0] * 6, [0] * 6, context_start=1, offsets=[(0, 2), (3, 5), (6, 8), (9, 11)])
    logits = np.zeros((6, 2), dtype=np.float32)
    # Positions 1-4 are the context tokens aa bb cc dd. The best start (cc, 9) comes after the best end (aa, 8):
    # that pair (17) is invalid. Valid: cc..dd = 9 + 5 = 14 (2 tokens), aa..aa = 5 + 8 = 13 (1 token).
    logits[3, 0], logits[1, 1] = 9.0, 8.0
    logits[1, 0], logits[4, 1] = 5.0, 5.0
    assert best_spans([ex], [w], [logits], max_answer_tokens=4)[0]["answer"] == "cc dd"
    assert best_spans([ex], [w], [logits], max_answer_tokens=1)[0]["answer"] == "aa"


def test_wrong_answer_offsets_are_fixed_or_dropped_with_one_warning(tmp_path):
    data = {
        "data": [
            {
                "paragraphs": [
                    {
                        "context": "one two three",
                        "qas": [
                            {"id": "1", "question": "q?", "answers": [{"text": "two", "answer_start": 0}]},
                            {"id": "2", "question": "q?", "answers": [{"text": "four", "answer_start": 0}]},
                            {"id": "E", "question": " ", "answers": [{"text": "one", "answer_start": 0}]},
                        ],
                    }
                ]
            }
        ]
    }
    path = tmp_path / "s.json"
    path.write_text(json.dumps(data))
    with pytest.warns(
        UserWarning, match="1 answer.*found in their context; 1 answer.*; 1 question.* skipped \\(E\\)"
    ):
        examples = read_squad(path)
    assert examples[0].answers == [{"text": "two", "answer_start": 4}] and examples[1].answers == []
    assert [ex.id for ex in examples] == ["1", "2"]
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="SQuAD"):
        read_squad(path)


def test_a_tiny_encoder_learns_to_extract_the_answer(qa_data, tmp_path):
    result = lmforge.finetune(
        "qa",
        qa_data / "bert",
        qa_data / "train.json",
        tmp_path / "run",
        dev=qa_data / "dev.json",
        epochs=3,
        max_length=32,
        doc_stride=12,
        batch_size=16,
        lr=3e-3,
        progress=False,
    )
    assert result.metrics["val_f1"] > 75, result.metrics
    assert evaluate_qa(tmp_path / "run", qa_data / "dev.json")["f1"] == pytest.approx(
        result.metrics["val_f1"]
    )
    qa = QuestionAnsweringPipeline(tmp_path / "run")
    context = "the fans   came to see 42 in the big stadium"
    answer = qa(question=QUESTION, context=context)
    assert answer["answer"] == "42" == context[answer["start"] : answer["end"]] and 0 < answer["score"] <= 1
    with pytest.raises(ConfigError, match="question"):
        qa(question="", context=context)
    with pytest.raises(ConfigError, match="bert"):
        lmforge.finetune("qa", tmp_path / "run", qa_data / "train.json", tmp_path / "again", progress=False)


def test_cli_finetune_evaluate_predict_qa(qa_data, tmp_path, capsys):
    import lmforge
    from lmforge.cli.main import main

    run = tmp_path / "run"
    assert (
        main(
            [
                "finetune",
                "--task",
                "qa",
                "--model",
                str(qa_data / "bert"),
                "--train",
                str(qa_data / "train.json"),
                "--dev",
                str(qa_data / "dev.json"),
                "--out",
                str(run),
                "--epochs",
                "3",
                "--max-length",
                "32",
                "--doc-stride",
                "12",
                "--batch-size",
                "16",
                "--lr",
                "3e-3",
                "--quiet",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["val_f1"] > 75
    assert main(["evaluate", str(run), "--task", "qa", "--data", str(qa_data / "dev.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["f1"] > 75
    # predict reads JSON Lines {question, context}; its answers are the pipeline's, and mostly the gold ones
    dev = squad(60, 1)["data"][0]["paragraphs"][:10]
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        "".join(json.dumps({"question": QUESTION, "context": p["context"]}) + "\n" for p in dev)
    )
    assert main(["predict", str(run), "--task", "qa", "--input", str(questions), "--json"]) == 0
    predicted = [json.loads(line)["answer"] for line in capsys.readouterr().out.splitlines()]
    qa = lmforge.pipeline("question-answering", model=run)
    assert predicted == [
        a["answer"] for a in qa([{"question": QUESTION, "context": p["context"]} for p in dev])
    ]
    gold = [p["qas"][0]["answers"][0]["text"] for p in dev]
    assert sum(a == g for a, g in zip(predicted, gold)) >= 6
    questions.write_text("not json\n")
    assert main(["predict", str(run), "--task", "qa", "--input", str(questions)]) == 2
    assert "q.jsonl:1" in capsys.readouterr().err
