import json

from lmforge.cli.main import main


def test_quickstart_on_a_user_corpus_beats_the_unigram_baseline(corpus_dir, tmp_path, capsys):
    out = tmp_path / "qs"
    code = main(["quickstart", "--corpus", str(corpus_dir), "--out", str(out), "--preset", "test",
                 "--vocab-size", "300", "--max-steps", "200", "--json"])
    captured = capsys.readouterr().out
    assert code == 0
    report = json.loads(captured[captured.index("{\n"):])
    assert report["steps"] == 200
    assert report["model"]["bits_per_byte"] < 0.8 * report["unigram"]["bits_per_byte"]
    assert len(report["samples"]) == 3 and all(s["completion"] for s in report["samples"])
    assert (out / "run" / "best" / "model.safetensors").is_file()
    assert "next, try:" in captured and "lmforge generate" in captured
    # A second run refuses to clobber the first unless asked to.
    assert main(["quickstart", "--corpus", str(corpus_dir), "--out", str(out), "--max-steps", "5"]) == 2
    assert "--overwrite" in capsys.readouterr().err
