"""Named-entity recognition: the CoNLL reader, sub-word alignment, taggers that learn, strict entity scores, the
pipeline's character offsets, and the CLI path."""

import dataclasses
import json
import random

import pytest
import torch

import lmforge
from lmforge.checkpoint import save_checkpoint
from lmforge.cli.main import main
from lmforge.errors import DataError
from lmforge.eval.ner import entity_metrics
from lmforge.models.registry import build_model
from lmforge.tasks.ner.conll import read_conll
from lmforge.tasks.ner.encoding import WordEncoder
from lmforge.tasks.ner.pipeline import merge_entities, split_words
from lmforge.tokenizers import Tokenizer
from lmforge.train.labels import IGNORE_INDEX

SYLLABLES = ["ka", "lo", "mi", "ren", "tor", "vak", "sel", "du", "bri", "gan", "os", "pe"]
CITIES = [["Paris"], ["London"], ["New", "York"], ["Rome"], ["Cairo"], ["Buenos", "Aires"]]
FILL = [
    "the",
    "a",
    "met",
    "saw",
    "yesterday",
    "and",
    "visited",
    "went",
    "today",
    "with",
    "he",
    "she",
    ",",
    ".",
]


def name(rng) -> str:
    return "".join(rng.sample(SYLLABLES, rng.randint(2, 3))).capitalize()


def sentence(rng) -> tuple[list[str], list[str]]:
    """A made-up name after "mr" is a person, the city words after "in" (one or two of them) are a place."""
    words, tags = [], []
    for _ in range(rng.randint(3, 6)):
        r = rng.random()
        if r < 0.25:
            words += ["mr", name(rng)]
            tags += ["O", "B-PER"]
        elif r < 0.45:
            city = rng.choice(CITIES)
            words += ["in", *city]
            tags += ["O", "B-LOC"] + ["I-LOC"] * (len(city) - 1)
        else:
            words.append(rng.choice(FILL))
            tags.append("O")
    return words, tags


def write_conll(path, n: int, seed: int):
    rng = random.Random(seed)
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
        words, tags = sentence(rng)
        lines += [f"{w} NNP B-NP {t}" for w, t in zip(words, tags)] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def conll(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conll")
    # Different seeds: the dev file's names are (mostly) ones the models never saw.
    return write_conll(folder / "train.txt", 400, 0), write_conll(folder / "dev.txt", 100, 1)


@pytest.fixture(scope="module")
def tiny_backbones(tmp_path_factory):
    """A random BERT-style and a random GPT checkpoint with a word-piece tokenizer (stand-ins for pretrained ones)."""
    folder = tmp_path_factory.mktemp("backbones")
    rng = random.Random(5)
    texts = [" ".join(sentence(rng)[0]) for _ in range(300)]
    tok = Tokenizer.train("wordpiece", texts, vocab_size=120, min_frequency=1)
    out = {}
    for arch in ("bert", "gpt"):
        torch.manual_seed(0)
        cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=tok.vocab_size)
        model = build_model(arch, cfg | ({"dropout": 0.0} if arch == "bert" else {}))
        out[arch] = save_checkpoint(
            folder / arch, model, tok, {"arch": arch, "model": dataclasses.asdict(model.config)}
        )
    return out


def test_conll_reader_sentences_docstart_and_malformed_lines(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n"
        "-DOCSTART- -X- -X- O\nPeter NNP B-NP I-PER\nBlackburn NNP I-NP I-PER\n",
        encoding="utf-8",
    )
    sentences = read_conll(good)
    assert [s.words for s in sentences] == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert sentences[0].tags == ["B-ORG", "O"] and sentences[1].line == 8
    assert sentences[1].tags == ["B-PER", "I-PER"]  # IOB1's entity-opening I- read as IOB2's B-
    assert len(read_conll(good, max_sentences=1)) == 1
    for body, message in (
        ("EU NNP B-NP B-ORG\nrejects\n", "bad.txt:2 has no tag"),
        ("EU NNP B-NP B-ORG\n\nrejects VBZ O\n", "bad.txt:3 has 3 columns"),
        ("EU NNP B-NP ORG\n", "bad.txt:1 has tag 'ORG'"),
        ("-DOCSTART- -X- -X- O\n\n", "no sentences"),
    ):
        bad = tmp_path / "bad.txt"
        bad.write_text(body, encoding="utf-8")
        with pytest.raises(DataError, match=message):
            read_conll(bad)


def test_only_the_first_sub_token_of_a_word_is_labelled():
    tok = Tokenizer.train(
        "wordpiece", ["the cat sat on the mat", "blackburn black burn"] * 20, vocab_size=60, min_frequency=1
    )
    words = ["the", "bathtub", "cat"]
    assert len(tok.encode("bathtub")) > 2  # an unseen word in several pieces (b ##at ##h ...)
    enc = WordEncoder(tok, "bert", max_length=64)
    ids, labels, starts = enc(words, [0, 1, 2])
    pieces = [len(tok.encode(w)) for w in words]
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and len(ids) == sum(pieces) + 2
    assert starts == [1, 1 + pieces[0], 1 + pieces[0] + pieces[1]]
    expected = [IGNORE_INDEX] * len(ids)
    for start, tag in zip(starts, [0, 1, 2]):
        expected[start] = tag
    assert labels == expected  # [CLS], [SEP] and every later piece are ignored by the loss
    # Truncation keeps whole words: the rare word does not fit, so only "the" is left.
    short = WordEncoder(tok, "bert", max_length=pieces[0] + 3)
    ids, labels, starts = short(words, [0, 1, 2])
    assert starts == [1] and [x for x in labels if x != IGNORE_INDEX] == [0] and len(ids) == pieces[0] + 2
    # Prediction reads a long sentence in pieces of whole words, covering every word once.
    spans = short.spans(short.pieces(words))
    assert spans[0] == (0, 1) and spans[-1][1] == 3 and all(a < b for a, b in spans)


def test_strict_entity_scores_on_a_hand_made_example():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-LOC", "I-LOC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "O", "B-LOC", "O"]]
    # Gold entities: PER(0-1), LOC(3), ORG(0), LOC(2-3) = 4. Predicted under strict IOB2: PER(0-1) right, ORG(3)
    # of the wrong type, LOC(2) with the wrong end, and "I-ORG" without a B- is no entity at all in strict mode
    # (lenient mode would count it and give precision 1/4): 3 predicted, 1 correct.
    # Precision 1/3, recall 1/4, F1 = 2 * (1/3) * (1/4) / (1/3 + 1/4) = 2/7.
    m = entity_metrics(gold, pred)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(0.25)
    assert m["f1"] == pytest.approx(2 / 7)
    assert m["per_type"]["PER"]["f1"] == 1.0 and m["per_type"]["LOC"]["support"] == 2
    assert m["per_type"]["LOC"]["recall"] == 0.0 and m["entities"] == 4
    # BIOES merging in the pipeline, and an orphan I- kept as an entity there (lenient, unlike scoring).
    assert [e[:3] for e in merge_entities(["S-PER", "B-LOC", "E-LOC", "I-ORG", "O"], [1.0] * 5)] == [
        ("PER", 0, 1),
        ("LOC", 1, 3),
        ("ORG", 3, 4),
    ]


@pytest.mark.parametrize("backbone", ["lstm", "bert"])
def test_each_backbone_learns_the_synthetic_entities(backbone, conll, tiny_backbones, tmp_path):
    train, dev = conll
    model = str(tiny_backbones[backbone]) if backbone in tiny_backbones else backbone
    result = lmforge.finetune(
        "ner", model, train, tmp_path / "run", dev=dev, epochs=6, batch_size=16, lr=3e-3, progress=False
    )
    assert result.metrics["val_f1"] > 0.9, result.metrics
    ner = lmforge.pipeline("ner", model=tmp_path / "run" / "best")
    text = "she  met mr   Kalotorvak\tin New   York ,yesterday"  # irregular spacing, a tab, glued punctuation
    entities = ner(text)
    assert all(text[e["start"] : e["end"]] == e["text"] for e in entities)
    assert [(e["type"], e["text"]) for e in entities] == [("PER", "Kalotorvak"), ("LOC", "New   York")]
    assert [(e["entity_group"], e["word"]) for e in entities] == [
        ("PER", "Kalotorvak"),
        ("LOC", "New   York"),
    ]
    assert all(0 < e["score"] <= 1 for e in entities)
    assert ner([text, "she went today"])[1] == []


def test_split_words_keeps_offsets_into_the_original_text():
    text = "  U.S. troops,  Jean-Pierre's\tAT&T 1,000."
    words = split_words(text)
    assert all(text[a:b] == w for w, a, b in words)
    assert [w for w, _, _ in words] == ["U.S", ".", "troops", ",", "Jean-Pierre's", "AT&T", "1,000", "."]


def test_cli_finetune_evaluate_report_predict(conll, tmp_path, capsys):
    train, dev = conll
    run = tmp_path / "run"
    assert (
        main(
            [
                "finetune",
                "--task",
                "ner",
                "--model",
                "lstm",
                "--train",
                str(train),
                "--dev",
                str(dev),
                "--out",
                str(run),
                "--epochs",
                "6",
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
    summary = json.loads(capsys.readouterr().out)
    assert summary["val_f1"] > 0.9 and summary["best"]
    assert (
        main(
            [
                "evaluate",
                str(run),
                "--task",
                "ner",
                "--data",
                str(dev),
                "--json",
                "--report",
                str(tmp_path / "report"),
            ]
        )
        == 0
    )
    scores = json.loads(capsys.readouterr().out)
    assert scores["f1"] == pytest.approx(summary["val_f1"]) and set(scores["per_type"]) == {"PER", "LOC"}
    assert {"precision", "recall"} <= set(scores) and scores["scheme"] == "IOB2"
    for name in ("metrics.json", "report.md", "confusion_matrix.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert (
        "| sentence | gold entities | predicted entities |" in (tmp_path / "report" / "report.md").read_text()
    )
    texts = tmp_path / "texts.txt"
    texts.write_text("he saw mr Dubri in  Rome\n\nshe went today\n", encoding="utf-8")
    assert main(["predict", str(run), "--task", "ner", "--input", str(texts), "--json"]) == 0
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [[(e["type"], e["text"], e["start"]) for e in ln["entities"]] for ln in lines] == [
        [("PER", "Dubri", 10), ("LOC", "Rome", 20)],
        [],
    ]
    # a tagger is no classifier, and the other way round
    assert main(["predict", str(run), "--input", str(texts)]) == 2
    assert "not a fine-tuned classifier" in capsys.readouterr().err


def test_unseen_dev_tags_and_gpt_backbones_are_refused(conll, tiny_backbones, tmp_path, capsys):
    train, _ = conll
    dev = tmp_path / "dev.txt"
    dev.write_text("Acme NNP B-NP B-ORG\nrose VBD B-VP O\n", encoding="utf-8")
    code = main(
        [
            "finetune",
            "--task",
            "ner",
            "--model",
            "lstm",
            "--train",
            str(train),
            "--dev",
            str(dev),
            "--out",
            str(tmp_path / "r1"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and "B-ORG" in err[0]
    code = main(
        [
            "finetune",
            "--task",
            "ner",
            "--model",
            str(tiny_backbones["gpt"]),
            "--train",
            str(train),
            "--out",
            str(tmp_path / "r2"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and "GPT" in err[0]
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
