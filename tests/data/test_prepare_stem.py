"""`prepare --stem`: words become their Snowball stems (for bag-of-words pipelines), with a warning, recorded as the
data's text convention so a text file is later read the same way."""

import json

import pytest

from lmforge.cli.main import main
from lmforge.data.prepare import iter_clean_documents, text_convention
from lmforge.data.shards import TokenShards, load_prepared

pytest.importorskip("nltk")


def test_prepare_stems_words_and_warns(tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_text("the runners were running quickly\ncats chased the dogs\n", encoding="utf-8")
    out = tmp_path / "data"
    argv = [
        "prepare",
        str(src),
        "--out",
        str(out),
        "--tokenizer",
        "char",
        "--doc-split",
        "line",
        "--stem",
        "en",
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: --stem deletes what a language model must learn to predict" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["stem"] == "en" and text_convention(manifest)["stem"] == "en"
    _, tokenizer = load_prepared(out)
    docs = list(iter_clean_documents([str(src)], text_convention(manifest)))
    assert docs == ["the runner were run quick", "cat chase the dog"]
    shards = [TokenShards(out, split) for split in manifest["splits"]]
    text = "".join(tokenizer.decode([int(t) for a in s.arrays for t in a]) for s in shards)
    assert "runner" in text and "runners" not in text and "chase " in text  # the stems were tokenized
    assert main([*argv[:-2], "--stem", "klingon", "--overwrite"]) == 2
    assert "no Snowball stemmer for language 'klingon'" in capsys.readouterr().err
