"""Static word vectors: word2vec/fastText training, the word2vec text and binary and GloVe formats, nearest
neighbours, analogies and the analogy/similarity scores, the `lmforge vectors` verbs, and embedding rows."""

import json
import random

import numpy as np
import pytest

from lmforge.cli.main import main
from lmforge.data.vectors import (
    VectorOptions,
    analogy,
    embedding_rows,
    evaluate_analogies,
    evaluate_similarity,
    load_vectors,
    nearest,
    parse_analogy,
    read_analogies,
    save_vectors,
    tokenize,
    train_vectors,
)
from lmforge.errors import ConfigError, DataError, OutputError

pytest.importorskip("gensim")

# Hand-made vectors: royalty, male, female, fruit. king - man + woman = queen exactly.
HAND = {
    "king": [1, 1, 0, 0],
    "queen": [1, 0, 1, 0],
    "man": [0, 1, 0, 0],
    "woman": [0, 0, 1, 0],
    "apple": [0, 0, 0, 1],
    "pear": [0.1, 0, 0, 0.9],
}


@pytest.fixture
def glove(tmp_path):
    """A GloVe text file (no header line)."""
    path = tmp_path / "hand.glove.txt"
    path.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in HAND.items()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    lines = []
    for _ in range(300):
        animal, food = rng.choice(["cat", "dog", "cow"]), rng.choice(["milk", "meat", "grass"])
        lines.append(f"The {animal} eats {food} . The {animal} sleeps !")
    (folder / "text.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "text.txt"


def small(**kw) -> VectorOptions:
    return VectorOptions(**{"dim": 12, "min_count": 1, "epochs": 3, "window": 2, **kw})


def test_tokenize_lowercases_words_and_keeps_clitics():
    assert tokenize("It 's a Well-Made film, isn't it?") == [
        "it",
        "'s",
        "a",
        "well-made",
        "film",
        "isn't",
        "it",
    ]


def test_word2vec_round_trips_through_text_and_binary_files(corpus, tmp_path):
    summary = train_vectors([str(corpus)], tmp_path / "v.txt", small())
    assert summary["vocab"] == 9 and summary["dim"] == 12 and summary["words"] == 300 * 7
    text = load_vectors(tmp_path / "v.txt")
    assert (tmp_path / "v.txt").read_text().splitlines()[0] == "9 12"  # word2vec text: a "count dim" header
    save_vectors(text, tmp_path / "v.bin")
    binary = load_vectors(tmp_path / "v.bin")
    assert list(binary.index_to_key) == list(text.index_to_key)
    np.testing.assert_array_equal(binary.vectors, text.vectors)
    # the same seed with one worker gives the same vectors
    train_vectors([str(corpus)], tmp_path / "again.txt", small())
    np.testing.assert_array_equal(load_vectors(tmp_path / "again.txt").vectors, text.vectors)


def test_fasttext_trains_and_cbow_differs_from_skipgram(corpus, tmp_path):
    train_vectors([str(corpus)], tmp_path / "ft.txt", small(kind="fasttext"))
    train_vectors([str(corpus)], tmp_path / "cbow.txt", small(sg=False))
    sg = load_vectors(train_vectors([str(corpus)], tmp_path / "sg.txt", small())["out"])
    assert load_vectors(tmp_path / "ft.txt").vector_size == 12
    assert not np.allclose(load_vectors(tmp_path / "cbow.txt")["cat"], sg["cat"])


def test_glove_files_load_and_answer_neighbours_and_analogies(glove):
    kv = load_vectors(glove)
    assert len(kv) == 6 and kv.vector_size == 4
    assert analogy(kv, "king - man + woman", top=1)[0][0] == "queen"
    assert analogy(kv, "KING -man +woman", top=1)[0][0] == "queen"  # case and attached signs
    assert nearest(kv, "apple", top=1)[0][0] == "pear"
    assert parse_analogy("paris - france + germany") == (["paris", "germany"], ["france"])
    with pytest.raises(ConfigError, match="joined by"):
        parse_analogy("king")
    with pytest.raises(DataError, match="not in the vectors"):
        nearest(kv, "dragon")


def test_analogy_and_similarity_scores(glove, tmp_path):
    kv = load_vectors(glove)
    questions = tmp_path / "q.txt"
    questions.write_text(
        "# a comment\n: gender\nman woman king queen\nwoman man queen king\nman woman dragon dragoness\n"
    )
    score = evaluate_analogies(kv, questions)
    assert score["accuracy"] == 1.0 and score["answered"] == 2 and score["skipped"] == 1
    assert score["sections"]["gender"] == {"correct": 2, "total": 2, "accuracy": 1.0}
    pairs = tmp_path / "sim.tsv"
    pairs.write_text("king\tqueen\t8\napple\tpear\t9\nking\tapple\t1\nman\tpear\t0.5\n")
    sim = evaluate_similarity(kv, pairs)
    assert sim["spearman"] > 0.5 and sim["oov_percent"] == 0
    bad = tmp_path / "bad.txt"
    bad.write_text("man woman king\n")
    with pytest.raises(DataError, match="Google format"):
        evaluate_analogies(kv, bad)


def test_the_shipped_analogy_set():
    questions = read_analogies("en")
    assert 100 <= len(questions) <= 300
    sections = {s for s, _ in questions}
    assert {"capital-country", "gender", "plural-nouns", "past-tense"} <= sections
    assert all(len(q) == 4 and q[0] != q[2] for _, q in questions)


def test_bad_vectors_files_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_vectors(tmp_path / "missing.vec")
    bad = tmp_path / "bad.vec"
    bad.write_text("3 4\nking 1 2 3 4\nqueen 1 2\n")
    with pytest.raises(DataError, match="not a valid word2vec"):
        load_vectors(bad)
    binary = tmp_path / "bin.vec"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError):
        load_vectors(binary)


def test_embedding_rows_follow_the_vocabulary_with_a_lowercase_fallback(glove):
    kv = load_vectors(glove)
    rows, found = embedding_rows(kv, [None, "King", "unknown", "pear"])
    assert found.tolist() == [False, True, False, True]
    np.testing.assert_array_equal(rows[1], kv["king"])
    np.testing.assert_array_equal(rows[2], np.zeros(4))
    kv.add_vectors(["Paris", "PARIS"], np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.float32))
    rows, found = embedding_rows(kv, ["paris"])
    np.testing.assert_array_equal(rows[0], [1, 2, 3, 4])  # the first casing listed


def test_cli_train_and_query(corpus, glove, tmp_path, capsys):
    out = tmp_path / "cli.bin"
    args = ["vectors", "train", str(corpus), "--out", str(out), "--dim", "8", "--min-count", "1", "--json"]
    assert main([*args, "--eval-analogy", "en"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["vocab"] == 9 and summary["analogy"]["answered"] == 0  # none of the set's words occur
    assert main(args) == 2  # the output exists: refused without --overwrite
    assert "already exists" in capsys.readouterr().err
    assert (
        main(["vectors", "query", str(glove), "--analogy", "king - man + woman", "--top", "2", "--json"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["answer"][0]["word"] == "queen" and len(result["answer"]) == 2
    assert main(["vectors", "query", str(glove), "--word", "apple", "--top", "1"]) == 0
    assert "pear" in capsys.readouterr().out
    assert main(["vectors", "query", str(glove), "--word", "dragon"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert main(["vectors", "query", str(glove)]) != 0
    assert "give --word" in capsys.readouterr().err


def test_bad_training_options(corpus, tmp_path):
    with pytest.raises(ConfigError, match="--dim"):
        train_vectors([str(corpus)], tmp_path / "v.txt", small(dim=0))
    with pytest.raises(DataError, match="min-count"):
        train_vectors([str(corpus)], tmp_path / "v.txt", small(min_count=10**6))
    with pytest.raises(OutputError):
        train_vectors([str(corpus)], corpus, small())  # its own input


def test_a_prepared_data_directory_is_read_as_its_train_text(corpus, tmp_path):
    data = tmp_path / "data"
    prep = [
        "prepare",
        str(corpus),
        "--out",
        str(data),
        "--tokenizer",
        "char",
        "--doc-split",
        "line",
        "--no-dedup",
    ]
    assert main(prep) == 0
    summary = train_vectors([str(data)], tmp_path / "p.txt", small())
    assert summary["vocab"] == 9  # the same words as the text itself
    assert 0 < summary["words"] <= 300 * 7  # the train split: the validation lines are held out
