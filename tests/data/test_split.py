"""`lmforge split`: exact stratified counts, no group in two splits, the same split for the same seed, the file's own
format (read back by the task readers), and refusals in one line."""

import json
import random
from collections import Counter

import pytest

from lmforge.cli.main import main
from lmforge.data.split import SplitOptions, assign, largest_remainder, split_file
from lmforge.errors import ConfigError, DataError, OutputError
from lmforge.tasks.classify.examples import Fields, read_examples
from lmforge.tasks.ner.conll import read_conll


def test_largest_remainder_shares_exactly():
    assert largest_remainder(7, [0.8, 0.1, 0.1]) == [5, 1, 1]  # 5.6, 0.7, 0.7: the two 0.7s get the rest
    assert largest_remainder(10, [0.8, 0.1, 0.1]) == [8, 1, 1]
    assert largest_remainder(3, [0.5, 0.5, 0.0]) == [2, 1, 0]  # a tie goes to the earlier share
    for n in range(0, 60):
        shares = largest_remainder(n, [0.7, 0.2, 0.1])
        assert sum(shares) == n and all(abs(s - n * f) < 1 for s, f in zip(shares, [0.7, 0.2, 0.1]))


def labelled_tsv(path, counts: dict, seed: int = 0):
    rng = random.Random(seed)
    rows = [
        (f"example {label} {i} {rng.random():.6f}", label) for label, n in counts.items() for i in range(n)
    ]
    rng.shuffle(rows)
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return rows


def test_stratified_split_has_exact_per_label_counts_and_round_trips(tmp_path, capsys):
    counts = {"pos": 103, "neg": 47, "neutral": 9}
    rows = labelled_tsv(tmp_path / "data.tsv", counts)
    report = split_file(
        tmp_path / "data.tsv", tmp_path / "out", SplitOptions(val=0.1, test=0.2, stratify="label")
    )
    fields = Fields(text="sentence", label="label")
    seen = []
    for k, name in enumerate(("train", "dev", "test")):
        examples = read_examples(tmp_path / "out" / f"{name}.tsv", fields)  # the task reader reads it back
        got = Counter(ex.labels[0] for ex in examples)
        want = {label: largest_remainder(n, [0.7, 0.1, 0.2])[k] for label, n in counts.items()}
        assert got == Counter({k2: v for k2, v in want.items() if v}), name
        assert report[name]["labels"] == {k2: v for k2, v in sorted(want.items()) if v}
        seen += [(ex.text, ex.labels[0]) for ex in examples]
    assert sorted(seen) == sorted((t.strip(), y) for t, y in rows)  # every example once, nowhere twice
    # The CLI prints the counts per label, and the same seed writes the same files.
    assert (
        main(
            [
                "split",
                str(tmp_path / "data.tsv"),
                "--out",
                str(tmp_path / "again"),
                "--val",
                "0.1",
                "--test",
                "0.2",
                "--stratify",
                "label",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "neg: 5" in out and "test" in out  # 47 x 0.1 = 4.7 -> 5 in dev
    for name in ("train", "dev", "test"):
        assert (tmp_path / "again" / f"{name}.tsv").read_bytes() == (
            tmp_path / "out" / f"{name}.tsv"
        ).read_bytes()
    split_file(
        tmp_path / "data.tsv", tmp_path / "seed1", SplitOptions(val=0.1, test=0.2, stratify="label", seed=1)
    )
    assert (tmp_path / "seed1" / "dev.tsv").read_text() != (tmp_path / "out" / "dev.tsv").read_text()


def test_groups_never_cross_splits_and_stay_near_the_label_shares(tmp_path, capsys):
    rng = random.Random(3)
    rows = []
    for g in range(60):
        for i in range(rng.randint(1, 6)):
            rows.append(
                {
                    "text": f"user {g} says {i}",
                    "intent": rng.choice(["buy", "buy", "refund"]),
                    "user": f"u{g}",
                }
            )
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    args = [
        "split",
        str(tmp_path / "d.jsonl"),
        "--out",
        str(tmp_path / "out"),
        "--stratify",
        "intent",
        "--group",
        "user",
        "--val",
        "0.15",
        "--test",
        "0.15",
        "--json",
    ]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    users = {}
    total = 0
    for name in ("train", "dev", "test"):
        lines = (tmp_path / "out" / f"{name}.jsonl").read_text().splitlines()
        total += len(lines)
        users[name] = {json.loads(ln)["user"] for ln in lines}
        assert report[name]["examples"] == len(lines) and report[name]["groups"] == len(users[name])
        share = len(lines) / len(rows)
        assert abs(share - {"train": 0.7, "dev": 0.15, "test": 0.15}[name]) < 0.06, (name, share)
    assert total == len(rows)
    assert not (
        users["train"] & users["dev"] or users["train"] & users["test"] or users["dev"] & users["test"]
    )
    # Deterministic by seed, grouped or not.
    labels = [r["intent"] for r in rows]
    groups = [r["user"] for r in rows]
    assert assign(labels, groups, [0.7, 0.15, 0.15], 5) == assign(labels, groups, [0.7, 0.15, 0.15], 5)
    assert assign(labels, groups, [0.7, 0.15, 0.15], 5) != assign(labels, groups, [0.7, 0.15, 0.15], 6)


def test_conll_documents_and_headerless_files(tmp_path):
    docs = []
    for d in range(10):
        sentences = [f"Doc{d} NNP B-ORG\nsays VBZ O\nsomething{s} NN O\n" for s in range(d % 3 + 1)]
        docs.append("-DOCSTART- -X- -X- O\n\n" + "\n".join(sentences) + "\n")
    (tmp_path / "ner.txt").write_text("".join(docs), encoding="utf-8")
    split_file(tmp_path / "ner.txt", tmp_path / "ner", SplitOptions(val=0.2, test=0.2, group="document"))
    where = {}
    for name in ("train", "dev", "test"):
        sentences = read_conll(tmp_path / "ner" / f"{name}.txt")  # the task reader reads it back
        assert all(len(s.words) == len(s.tags) == 3 and s.words[1:2] == ["says"] for s in sentences)
        for s in sentences:
            assert where.setdefault(s.words[0], name) == name  # a document stays in one split
    assert len(where) == 10
    with pytest.raises(ConfigError, match="tag per word"):
        split_file(tmp_path / "ner.txt", tmp_path / "x", SplitOptions(stratify="label"))
    # A TSV without a header: the label is column 1, every line is an example.
    (tmp_path / "ag.tsv").write_text(
        "".join(f"news {i}\t{'AB'[i % 2]}\n" for i in range(20)), encoding="utf-8"
    )
    report = split_file(tmp_path / "ag.tsv", tmp_path / "ag", SplitOptions(val=0.1, test=0.1, stratify="1"))
    assert report["examples"] == 20 and report["dev"]["labels"] == {"A": 1, "B": 1}
    assert len((tmp_path / "ag" / "train.tsv").read_text().splitlines()) == 16


def test_refusals_are_one_line(tmp_path, capsys):
    labelled_tsv(tmp_path / "d.tsv", {"a": 5, "b": 5})
    with pytest.raises(ConfigError, match="leave some training data"):
        SplitOptions(val=0.5, test=0.5).validate()
    with pytest.raises(DataError, match="no field 'intent'.*sentence, label"):
        split_file(tmp_path / "d.tsv", tmp_path / "o1", SplitOptions(stratify="intent"))
    with pytest.raises(DataError, match="too few"):
        split_file(tmp_path / "d.tsv", tmp_path / "o2", SplitOptions(val=0.01, test=0.01, group="sentence"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(OutputError, match="--overwrite"):
        split_file(tmp_path / "d.tsv", tmp_path / "full", SplitOptions())
    assert main(["split", str(tmp_path / "nope.tsv"), "--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
