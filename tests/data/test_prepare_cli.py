"""`lmforge prepare` on the command line, through `lmforge.cli.main.main`."""

from __future__ import annotations

import json

import pytest

import lmforge.cli.main as cli_main
from lmforge.data.shards import TokenShards


@pytest.fixture(autouse=True)
def only_prepare(monkeypatch):
    # Build the parser from this verb alone, so these tests do not depend on the other verbs' modules.
    monkeypatch.setattr(cli_main, "VERB_MODULES", ["prepare"])


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(30):
        (folder / f"{i:02d}.txt").write_text(
            f"Story number {i}.\nIt was a good day for story {i}.\n", encoding="utf-8"
        )
    return folder


def test_good_input_prints_a_summary_and_returns_0(tmp_path, corpus, capsys):
    out = tmp_path / "data"
    rc = cli_main.main(
        ["prepare", str(corpus), "--out", str(out), "--tokenizer", "char", "--val-fraction", "0.2"]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out.startswith(f"prepared {out}: char tokenizer (trained)")
    assert (
        "train" in captured.out and "val" in captured.out and "removed: 0 empty, 0 duplicates" in captured.out
    )
    assert TokenShards(out, "train").tokens > 0 and TokenShards(out, "val").tokens > 0


def test_json_prints_the_manifest_and_flags_reach_prepare(tmp_path, corpus, capsys):
    argv = [
        "prepare",
        str(corpus),
        "--out",
        str(tmp_path / "data"),
        "--tokenizer",
        "char",
        "--split",
        "tail",
        "--doc-split",
        "line",
        "--normalize",
        "none",
        "--no-dedup",
        "--html",
        "off",
        "--seed",
        "3",
        "--json",
    ]
    assert cli_main.main(argv) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["format"] == "lmforge-shards/1"
    opts = manifest["options"]
    assert (
        opts["split"],
        opts["doc_split"],
        opts["normalize"],
        opts["dedup"],
        opts["html"],
        manifest["seed"],
    ) == (
        "tail",
        "line",
        None,
        False,
        "off",
        3,
    )
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"] >= 60


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tokenizer", "char", "--val-fraction", "1.5"], "strictly between 0 and 1"),
        (["--tokenizer", "nonsense"], "neither a tokenizer kind"),
        (["--tokenizer", "char", "--encoding", "nope"], "unknown encoding"),
    ],
)
def test_bad_input_prints_one_error_line_and_returns_2(tmp_path, corpus, capsys, extra, message):
    rc = cli_main.main(["prepare", str(corpus), "--out", str(tmp_path / "data"), *extra])
    captured = capsys.readouterr()
    assert rc == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "data").exists()


def test_missing_input_returns_2(tmp_path, capsys):
    assert cli_main.main(["prepare", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err.startswith("error: input ")


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as info:
        cli_main.main(["prepare", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "lmforge prepare" in out and "--near-dedup" in out


def test_add_eos_puts_one_eos_after_every_line_and_keeps_repeats(tmp_path, capsys):
    text = tmp_path / "ptb.txt"
    text.write_text("the cat sat\nthe dog ran\nthe cat sat\n", encoding="utf-8")
    val = tmp_path / "valid.txt"
    val.write_text("the dog sat\n", encoding="utf-8")
    args = [
        "prepare",
        str(text),
        "--out",
        str(tmp_path / "d"),
        "--tokenizer",
        "word",
        "--val",
        str(val),
        "--add-eos",
    ]
    assert cli_main.main(args) == 0
    ids = [int(i) for a in TokenShards(tmp_path / "d", "train").arrays for i in a]
    from lmforge.tokenizers import Tokenizer

    tok = Tokenizer.load(tmp_path / "d")
    assert ids.count(tok.eos_id) == 3 and len(ids) == 12  # 9 words + 3 <eos>, the repeated line kept
    assert (
        cli_main.main(args[:2] + ["--out", str(tmp_path / "e"), "--add-eos", "--doc-split", "paragraph"]) == 2
    )
    assert "--add-eos" in capsys.readouterr().err
