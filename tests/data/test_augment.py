"""Augmentation (`lmforge augment`, `finetune --augment`): every method seeded and label-keeping, EDA's operations
within their share of words, NER tags aligned, the training split only, and refusals in one line."""

import dataclasses
import json
import math
import random

import pytest
import torch

from lmforge.checkpoint import save_checkpoint
from lmforge.cli.main import main
from lmforge.data.augment import AugmentOptions, augment_file, augment_tagged, augment_texts, eda_op
from lmforge.errors import ConfigError, DataError
from lmforge.models.registry import build_model
from lmforge.tokenizers import Tokenizer

WORDS = "the film was good great fine bad awful dull plot acting story music really quite a and it".split()
SYNONYMS = {"good": ["great", "fine"], "bad": ["awful", "poor"], "film": ["movie"], "plot": ["story"]}


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(n)]


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    """A word2vec text file whose nearest neighbours are SYNONYMS (each word near its synonyms only)."""
    words = sorted({w for k, v in SYNONYMS.items() for w in [k, *v]} | set(WORDS))
    groups = {w: i for i, (k, v) in enumerate(SYNONYMS.items()) for w in [k, *v]}
    dim = len(SYNONYMS) + len(words)
    lines = [f"{len(words)} {dim}"]
    for j, w in enumerate(words):
        vec = [0.0] * dim
        if w in groups:
            vec[groups[w]] = 1.0
            vec[len(SYNONYMS) + j] = 0.3  # close to the group, not identical
        else:
            vec[len(SYNONYMS) + j] = 1.0  # far from everything
        lines.append(w + " " + " ".join(f"{x:.3f}" for x in vec))
    path = tmp_path_factory.mktemp("vec") / "vec.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def fake_synonyms(word: str) -> list[str]:
    return SYNONYMS.get(word.lower(), [])


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.3])
def test_each_eda_operation_changes_at_most_its_share_of_words(alpha):
    rng = random.Random(0)
    for text in sentences(200, seed=1):
        words = text.split()
        cap = math.ceil(alpha * len(words))
        sr, _ = eda_op("synonym", words, None, alpha, rng, fake_synonyms, frozenset())
        assert len(sr) == len(words) and sum(a != b for a, b in zip(sr, words)) <= cap
        ri, _ = eda_op("insert", words, None, alpha, rng, fake_synonyms, frozenset())
        assert len(words) <= len(ri) <= len(words) + cap
        assert all(w in words or any(w in v for v in SYNONYMS.values()) for w in ri)
        rs, _ = eda_op("swap", words, None, alpha, rng, fake_synonyms, frozenset())
        assert sorted(rs) == sorted(words) and sum(a != b for a, b in zip(rs, words)) <= 2 * cap
        rd, _ = eda_op("delete", words, None, alpha, rng, fake_synonyms, frozenset())
        assert len(words) - cap <= len(rd) < len(words)
        it = iter(words)
        assert all(w in it for w in rd)  # the words left are the sentence's, in order
    # Stopwords are never replaced.
    sr, _ = eda_op("synonym", ["good", "film"], None, 1.0, rng, fake_synonyms, frozenset({"good"}))
    assert sr[0] == "good" and sr[1] == "movie"
    sr, _ = eda_op("synonym", ["Good", "FILM"], None, 1.0, rng, fake_synonyms, frozenset())
    assert sr[0] in ("Great", "Fine") and sr[1] == "MOVIE"  # a replacement takes the case of the word


def test_eda_and_noise_are_seeded_and_keep_labels(tmp_path, vectors):
    pytest.importorskip("gensim")
    texts = sentences(30)
    for method in ("eda", "noise"):
        opts = AugmentOptions(method=method, n=4, alpha=0.2, vectors=str(vectors), seed=0)
        a, b = augment_texts(texts, opts), augment_texts(texts, opts)
        c = augment_texts(texts, dataclasses.replace(opts, seed=1))
        assert a == b and a != c, method
        assert all(0 < len(new) <= 4 and all(t != orig for t in new) for orig, new in zip(texts, a))
        if method == "noise":  # typos change letters inside words, never the number of words
            assert all(len(t.split()) == len(orig.split()) for orig, new in zip(texts, a) for t in new)
    rows = [{"id": i, "text": t, "label": "pos" if i % 3 else "neg"} for i, t in enumerate(texts)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report = augment_file(
        tmp_path / "d.jsonl", tmp_path / "aug.jsonl", AugmentOptions("eda", n=3, vectors=str(vectors))
    )
    out = [json.loads(ln) for ln in (tmp_path / "aug.jsonl").read_text().splitlines()]
    assert report["written"] == len(out) == len(rows) + report["new"] and report["new"] > len(rows)
    assert all(r["label"] == rows[r["id"]]["label"] for r in out)  # every new example keeps its label
    assert [r for r in out if r["text"] == rows[r["id"]]["text"]] == rows  # the originals, in order


def test_ner_tags_stay_aligned(tmp_path, vectors):
    pytest.importorskip("gensim")
    conll = []
    rng = random.Random(0)
    for _ in range(20):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 10))]
        tags = ["O"] * len(words)
        at = rng.randrange(len(words) - 1)
        words[at : at + 2], tags[at : at + 2] = ["New", "York"], ["B-LOC", "I-LOC"]
        conll.append((words, tags))
    for method in ("eda", "noise"):
        opts = AugmentOptions(method=method, n=4, alpha=0.3, vectors=str(vectors), seed=2)
        out = augment_tagged(conll, opts)
        assert out == augment_tagged(conll, opts)
        for (_, tags), new in zip(conll, out):
            assert new
            for w, t in new:
                assert len(w) == len(t)
                if method == "noise":
                    assert t == tags
                else:  # entities untouched and whole: the entity words and tags in order, nothing inside
                    assert [(x, y) for x, y in zip(w, t) if y != "O"] == [("New", "B-LOC"), ("York", "I-LOC")]
                    assert t[t.index("B-LOC") + 1] == "I-LOC"
    lines = "-DOCSTART- -X- O\n\n" + "\n".join(
        "".join(f"{w} NN {t}\n" for w, t in zip(ws, ts)) for ws, ts in conll
    )
    (tmp_path / "ner.txt").write_text(lines, encoding="utf-8")
    augment_file(tmp_path / "ner.txt", tmp_path / "aug.txt", AugmentOptions("noise", n=2, seed=0))
    from lmforge.tasks.ner.conll import read_conll

    back = read_conll(tmp_path / "aug.txt")
    assert len(back) > len(conll) and all(len(s.words) == len(s.tags) for s in back)
    with pytest.raises(ConfigError, match="cannot keep NER tags aligned"):
        augment_file(tmp_path / "ner.txt", tmp_path / "x.txt", AugmentOptions("contextual", model="m"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A random BERT-style masked LM and two random encoder-decoders, with one word tokenizer."""
    folder = tmp_path_factory.mktemp("models")
    tok = Tokenizer.train("word", sentences(200) * 2)
    out = {}
    for name, arch, cfg in (
        ("mlm", "bert", dict(n_layer=1, n_head=2, n_embd=32, block_size=32, dropout=0.0)),
        ("en-xx", "seq2seq", dict(n_layer=1, n_head=2, n_embd=32, block_size=12, dropout=0.0)),
        ("xx-en", "seq2seq", dict(n_layer=1, n_head=2, n_embd=32, block_size=12, dropout=0.0)),
    ):
        torch.manual_seed(len(out))
        model = build_model(arch, dict(cfg, vocab_size=tok.vocab_size))
        cfg_dict = {"arch": arch, "model": dataclasses.asdict(model.config)}
        out[name] = str(save_checkpoint(folder / name, model, tok, cfg_dict))
    return out


def test_contextual_and_backtranslate_are_seeded_and_keep_labels(tmp_path, models):
    texts = sentences(5, seed=4)
    ctx = AugmentOptions("contextual", n=3, alpha=0.3, model=models["mlm"], device="cpu")
    a = augment_texts(texts, ctx)
    assert a == augment_texts(texts, ctx) and a != augment_texts(texts, dataclasses.replace(ctx, seed=1))
    for orig, new in zip(texts, a):
        for t in new:  # the same number of words, some of them replaced by vocabulary words
            assert len(t.split()) == len(orig.split()) and t != orig
    bt = AugmentOptions(
        "backtranslate", n=2, via=(models["en-xx"], models["xx-en"]), num_beams=2, device="cpu"
    )
    b = augment_texts(texts, bt)
    assert b == augment_texts(texts, bt)  # beam search is deterministic
    assert all(len(new) <= 2 and orig not in new for orig, new in zip(texts, b))
    rows = "text\tlabel\n" + "".join(f"{t}\t{'pos' if i % 2 else 'neg'}\n" for i, t in enumerate(texts))
    (tmp_path / "d.tsv").write_text(rows, encoding="utf-8")
    args = [
        "augment",
        str(tmp_path / "d.tsv"),
        "--out",
        str(tmp_path / "bt.tsv"),
        "--method",
        "backtranslate",
        "--via",
        f"{models['en-xx']},{models['xx-en']}",
        "--n",
        "2",
        "--num-beams",
        "2",
        "--only-new",
        "--json",
    ]
    assert main(args) == 0
    out = (tmp_path / "bt.tsv").read_text().splitlines()
    assert out[0] == "text\tlabel" and all(ln.count("\t") == 1 for ln in out[1:])
    with pytest.raises(ConfigError, match="not an encoder-decoder"):
        augment_texts(texts, dataclasses.replace(bt, via=(models["mlm"], models["xx-en"])))
    with pytest.raises(ConfigError, match="not a masked-LM"):
        augment_texts(texts, dataclasses.replace(ctx, model=models["en-xx"]))


def test_finetune_augments_the_training_split_only(tmp_path, capsys):
    rng = random.Random(0)

    def rows(n):
        out = []
        for _ in range(n):
            label = rng.choice(["pos", "neg"])
            words = rng.sample(WORDS[9:], 4) + [
                rng.choice(["good", "great"] if label == "pos" else ["bad", "dull"])
            ]
            out.append(f"{' '.join(words)}\t{label}")
        return "sentence\tlabel\n" + "\n".join(out) + "\n"

    (tmp_path / "train.tsv").write_text(rows(40), encoding="utf-8")
    (tmp_path / "dev.tsv").write_text(rows(20), encoding="utf-8")
    common = [
        "finetune",
        "--task",
        "classify",
        "--model",
        "lstm",
        "--train",
        str(tmp_path / "train.tsv"),
        "--dev",
        str(tmp_path / "dev.tsv"),
        "--text-field",
        "sentence",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--quiet",
        "--json",
    ]
    assert main([*common, "--out", str(tmp_path / "aug"), "--augment", "noise", "--augment-n", "2"]) == 0
    capsys.readouterr()
    card = (tmp_path / "aug" / "best" / "README.md").read_text()
    trained = int(card.split("training file")[1].split("(")[1].split(" ")[0].replace(",", ""))
    assert 40 < trained <= 120  # 40 originals plus up to 2 new ones each
    assert "dev file: `" + str(tmp_path / "dev.tsv") + "` (20 examples)" in card  # dev untouched
    # The card and the checkpoint's config say the run was augmented, how, and what the training set became.
    assert f"- augmented (`--augment noise --augment-n 2`): 40 training examples became {trained}" in card
    saved = json.loads((tmp_path / "aug" / "best" / "config.json").read_text())["data"]["augment"]
    assert saved == {
        "method": "noise", "n": 2, "seed": 0, "alpha": 0.1, "original": 40, "training_examples": trained
    }  # fmt: skip
    plain = [a for a in common if a != "--dev" and a != str(tmp_path / "dev.tsv")]
    assert main([*plain, "--out", str(tmp_path / "tf"), "--model", "tfidf", "--augment", "noise"]) == 0
    card = (tmp_path / "tf" / "best" / "README.md").read_text()
    assert "- augmented (`--augment noise --augment-n 4`): 40 training examples became" in card
    # Refusals: one line each, exit code 2.
    for extra, message in (
        (["--augment", "nope"], "unknown augmentation method"),
        (["--augment", "noise", "--augment-n", "0"], "at least 1"),
        (["--augment-model", "x"], "belongs to --augment"),
    ):
        assert main([*common, "--out", str(tmp_path / "bad"), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    ner = [
        "finetune",
        "--task",
        "ner",
        "--model",
        "lstm",
        "--train",
        str(tmp_path / "train.tsv"),
        "--out",
        str(tmp_path / "ner"),
        "--augment",
        "contextual",
        "--augment-model",
        "m",
    ]
    assert main(ner) == 2
    assert "cannot keep NER tags aligned" in capsys.readouterr().err
    qa = [
        "finetune",
        "--task",
        "qa",
        "--model",
        "lstm",
        "--train",
        "x.json",
        "--out",
        str(tmp_path / "qa"),
        "--augment",
        "eda",
    ]
    assert main(qa) == 2
    assert "--augment is for classify, nli and ner" in capsys.readouterr().err


def test_augment_cli_refusals(tmp_path, capsys):
    (tmp_path / "d.tsv").write_text("sentence\tlabel\na good film\t1\n", encoding="utf-8")
    base = ["augment", str(tmp_path / "d.tsv"), "--out", str(tmp_path / "o.tsv")]
    for extra, message in (
        (["--method", "mixup"], "unknown augmentation method 'mixup'"),
        (["--method", "noise", "--n", "0", "--text-field", "sentence"], "at least 1"),
        (["--method", "noise"], "no field 'text'"),
        (["--method", "contextual", "--text-field", "sentence"], "needs a masked-LM checkpoint"),
        (["--method", "backtranslate", "--via", "onlyone"], "two checkpoints"),
    ):
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    with pytest.raises(DataError, match="has no examples"):
        (tmp_path / "e.tsv").write_text("sentence\tlabel\n", encoding="utf-8")
        augment_file(tmp_path / "e.tsv", tmp_path / "o2.tsv", AugmentOptions("noise"), "sentence")


def test_eda_takes_wordnet_synonyms_when_its_data_is_installed(monkeypatch):
    import lmforge.data.augment as augment

    class Lemma:
        def __init__(self, name):
            self._name = name

        def name(self):
            return self._name

    class Synset:
        def __init__(self, names):
            self.names = names

        def lemmas(self):
            return [Lemma(n) for n in self.names]

    class FakeWordNet:  # stands in for nltk's reader: the tests never download WordNet's data
        def synsets(self, word):
            return [Synset([word, *SYNONYMS.get(word, []), "two_words"])]

    monkeypatch.setattr(augment, "wordnet_or_none", lambda: FakeWordNet())
    synonyms = augment.Synonyms(None)
    assert synonyms("good") == ["fine", "great"]  # itself and multi-word lemmas left out
    out = augment_texts(["good film"] * 3, AugmentOptions("eda", n=4, alpha=0.5))
    assert all(set(t.split()) <= {"good", "film", "great", "fine", "movie"} for new in out for t in new)
    monkeypatch.setattr(augment, "wordnet_or_none", lambda: None)
    with pytest.raises(ConfigError, match="eda needs synonyms: give a word-vectors file"):
        augment_texts(["good film"], AugmentOptions("eda"))
