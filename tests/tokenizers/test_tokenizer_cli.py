"""`lmforge tokenizer train|encode|decode|info` through the real entry point `lmforge.cli.main.main`."""

from __future__ import annotations

import importlib.util
import io
import json
import sys

import pytest

import lmforge.cli.main as cli_main
from lmforge.tokenizers import Tokenizer

CORPUS = (
    "Once upon a time there was a little language model.\n"
    "It read the same story again and again, and learned its words.\n"
    "\tIndented lines, 中文字符 and emoji 👨‍👩‍👧 are text too.\n"
) * 40
TEXT = "Once upon a time, a model learned 中文 and 👨‍👩‍👧.\n\tThe end."


@pytest.fixture(autouse=True)
def _only_existing_verbs(monkeypatch):
    # Verbs are written by several people; build the parser from the verb modules that exist so far.
    present = [v for v in cli_main.VERB_MODULES if importlib.util.find_spec(f"lmforge.cli.{v}") is not None]
    assert "tokenizer" in present
    monkeypatch.setattr(cli_main, "VERB_MODULES", present)


def run(capsys, *argv: str, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    capsys.readouterr()
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli_main.main(["tokenizer", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


@pytest.fixture
def trained(tmp_path, corpus, capsys):
    code, out, err = run(
        capsys, "train", str(corpus), "--kind", "bpe", "--vocab-size", "300", "--out", str(tmp_path / "tok")
    )
    assert (code, err) == (0, "")
    return tmp_path / "tok"


def test_train_info_encode_decode_round_trip(tmp_path, corpus, capsys, monkeypatch):
    code, out, err = run(
        capsys, "train", str(corpus), "--kind", "bpe", "--vocab-size", "300", "--out", str(tmp_path / "tok")
    )
    assert code == 0 and err == ""
    path = tmp_path / "tok" / "tokenizer.json"
    assert "bpe" in out and "300" in out and str(path) in out

    code, out, _ = run(capsys, "info", str(tmp_path / "tok"), "--json")
    info = json.loads(out)
    assert code == 0
    assert info["kind"] == "bpe" and info["vocab_size"] == 300
    assert info["sha256"] == Tokenizer.load(path).sha256()
    assert {role: v["id"] for role, v in info["special_tokens"].items()} == {
        "pad": 0,
        "unk": 1,
        "bos": 2,
        "eos": 3,
        "mask": 4,
    }

    code, out, _ = run(capsys, "info", str(path))
    assert code == 0
    assert "bpe" in out and info["sha256"] in out and "<|eos|>" in out

    code, out, _ = run(capsys, "encode", str(path), "--text", TEXT)
    ids = [int(x) for x in out.split()]
    assert code == 0 and ids == Tokenizer.load(path).encode(TEXT)

    code, out, _ = run(capsys, "decode", str(path), "--ids", " ".join(map(str, ids)))
    assert code == 0 and out == TEXT + "\n"

    # Piped: encode from stdin, decode from stdin.
    code, out, _ = run(capsys, "encode", str(tmp_path / "tok"), stdin=TEXT, monkeypatch=monkeypatch)
    assert code == 0 and [int(x) for x in out.split()] == ids
    code, out, _ = run(capsys, "decode", str(tmp_path / "tok"), stdin=out, monkeypatch=monkeypatch)
    assert code == 0 and out == TEXT + "\n"


def test_encode_json_and_file(trained, tmp_path, capsys, monkeypatch):
    text_file = tmp_path / "in.txt"
    text_file.write_bytes(TEXT.replace("\n", "\r\n").encode("utf-8"))
    code, out, _ = run(capsys, "encode", str(trained), "--file", str(text_file), "--json")
    result = json.loads(out)
    tok = Tokenizer.load(trained)
    assert code == 0
    assert result["ids"] == tok.encode(TEXT.replace("\n", "\r\n"))  # the file exactly, \r included
    assert result["tokens"] == [tok.id_to_token(i) for i in result["ids"]]
    assert result["count"] == len(result["ids"])
    # The JSON output can be fed to decode as it is.
    code, out, _ = run(capsys, "decode", str(trained), stdin=json.dumps(result), monkeypatch=monkeypatch)
    assert code == 0 and out == TEXT.replace("\n", "\r\n") + "\n"


def test_decode_keep_special_and_list_forms(trained, capsys):
    tok = Tokenizer.load(trained)
    ids = tok.encode("Once upon a time")
    code, out, _ = run(capsys, "decode", str(trained), "--ids", " ".join(map(str, [2, *ids, 3])))
    assert code == 0 and out == "Once upon a time\n"
    code, out, _ = run(capsys, "decode", str(trained), "--ids", json.dumps([2, *ids, 3]), "--keep-special")
    assert code == 0 and out == "<|bos|>Once upon a time<|eos|>\n"
    code, out, _ = run(capsys, "decode", str(trained), "--ids", ",".join(map(str, ids)))
    assert code == 0 and out == "Once upon a time\n"


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram", "char"])
def test_train_every_kind_from_folder_and_jsonl(kind, tmp_path, capsys):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(CORPUS, encoding="utf-8")
    (folder / "sub" / "b.md").write_text("# Notes\n\nhello world, hello again.\n" * 20, encoding="utf-8")
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")  # not text: not read
    records = tmp_path / "records.jsonl"
    records.write_text(
        "\n".join(json.dumps({"content": f"record {i}: zebra quagga okapi", "id": i}) for i in range(50))
        + "\n\n",
        encoding="utf-8",
    )
    out_file = tmp_path / "out" / "my-tokenizer.json"
    code, out, err = run(
        capsys,
        "train",
        str(folder),
        str(records),
        "--kind",
        kind,
        "--text-field",
        "content",
        "--vocab-size",
        "400",
        "--min-frequency",
        "1",
        "--out",
        str(out_file),
        "--json",
    )
    assert (code, err) == (0, "")
    result = json.loads(out)
    assert result["kind"] == kind and result["files"] == 3 and result["path"] == str(out_file)
    tok = Tokenizer.load(out_file)
    assert tok.kind == kind and tok.vocab_size == result["vocab_size"] <= 400
    # Text from each source was learned: none of these words is unknown.
    for word in ["zebra", "Notes", "model"]:
        assert tok.unk_id not in tok.encode(word)


def test_tokenizer_alone_prints_its_help(capsys):
    code, out, _ = run(capsys)
    assert code == 0 and "train" in out and "decode" in out and "examples:" in out


@pytest.mark.parametrize("action", ["train", "encode", "decode", "info"])
def test_every_action_has_a_description_and_examples(action, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main.main(["tokenizer", action, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert "examples:" in out and f"lmforge tokenizer {action}" in out.split("examples:")[1]


def _bad_inputs(tmp, corpus, tok):
    (tmp / "broken.json").write_text('{"model": ', encoding="utf-8")
    (tmp / "latin1.txt").write_bytes("caf\xe9 ol\xe9\n".encode("latin-1") * 10)
    (tmp / "bad.jsonl").write_text('{"body": "no text field"}\n{"body": "nor here"}\n', encoding="utf-8")
    (tmp / "empty.txt").write_text("  \n\n", encoding="utf-8")
    (tmp / "no-text").mkdir()
    (tmp / "no-text" / "x.bin").write_bytes(b"\x00")
    return {
        "missing tokenizer": ["info", str(tmp / "nowhere")],
        "folder without tokenizer": ["encode", str(tmp / "no-text"), "--text", "hi"],
        "corrupted tokenizer": ["encode", str(tmp / "broken.json"), "--text", "hi"],
        "non-integer id": ["decode", str(tok), "--ids", "1 two 3"],
        "float id": ["decode", str(tok), "--ids", "1 2.5"],
        "id out of range": ["decode", str(tok), "--ids", "1 300"],
        "negative id": ["decode", str(tok), "--ids", "-1"],
        "bad json ids": ["decode", str(tok), "--ids", '{"tokens": [1]}'],
        "missing encode file": ["encode", str(tok), "--file", str(tmp / "nope.txt")],
        "empty corpus": ["train", str(tmp / "empty.txt"), "--out", str(tmp / "bad-out-1")],
        "unknown kind": ["train", str(corpus), "--kind", "sentencepiece", "--out", str(tmp / "bad-out-2")],
        "missing input": ["train", str(tmp / "nope.txt"), "--out", str(tmp / "bad-out-3")],
        "folder without text": ["train", str(tmp / "no-text"), "--out", str(tmp / "bad-out-4")],
        "not utf-8": ["train", str(tmp / "latin1.txt"), "--out", str(tmp / "bad-out-5")],
        "jsonl without field": ["train", str(tmp / "bad.jsonl"), "--out", str(tmp / "bad-out-6")],
        "bpe vocab too small": ["train", str(corpus), "--vocab-size", "100", "--out", str(tmp / "bad-out-7")],
        "unigram vocab too small": [
            "train",
            str(corpus),
            "--kind",
            "unigram",
            "--vocab-size",
            "10",
            "--out",
            str(tmp / "bad-out-8"),
        ],
        "bad min frequency": ["train", str(corpus), "--min-frequency", "0", "--out", str(tmp / "bad-out-9")],
    }


BAD_NAMES = [
    "missing tokenizer",
    "folder without tokenizer",
    "corrupted tokenizer",
    "non-integer id",
    "float id",
    "id out of range",
    "negative id",
    "bad json ids",
    "missing encode file",
    "empty corpus",
    "unknown kind",
    "missing input",
    "folder without text",
    "not utf-8",
    "jsonl without field",
    "bpe vocab too small",
    "unigram vocab too small",
    "bad min frequency",
]


@pytest.mark.parametrize("case", BAD_NAMES)
def test_bad_input_is_one_error_line_and_exit_2(case, trained, corpus, tmp_path, capsys):
    cases = _bad_inputs(tmp_path, corpus, trained)
    assert set(cases) == set(BAD_NAMES)
    code, out, err = run(capsys, *cases[case])
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) > len("error: ") + 10
    assert "Traceback" not in err
    # Failed training leaves no tokenizer behind.
    assert not list(tmp_path.glob("bad-out-*"))


def test_empty_ids_decode_to_empty_text(trained, capsys):
    code, out, _ = run(capsys, "decode", str(trained), "--ids", "")
    assert (code, out) == (0, "\n")
