import json

from lmforge.cli.main import main


def test_quickstart_on_a_user_corpus_beats_the_unigram_baseline(corpus_dir, tmp_path, capsys):
    out = tmp_path / "qs"
    code = main(
        [
            "quickstart",
            "--corpus",
            str(corpus_dir),
            "--out",
            str(out),
            "--preset",
            "test",
            "--vocab-size",
            "300",
            "--max-steps",
            "200",
            "--json",
        ]
    )
    captured = capsys.readouterr().out
    assert code == 0
    report = json.loads(captured[captured.index("{\n") :])
    assert report["steps"] == 200
    assert report["model"]["bits_per_byte"] < 0.8 * report["unigram"]["bits_per_byte"]
    assert len(report["samples"]) == 3 and all(s["completion"] for s in report["samples"])
    assert (out / "run" / "best" / "model.safetensors").is_file()
    assert "next, try:" in captured and "lmforge generate" in captured
    # A second run refuses to clobber the first unless asked to.
    assert main(["quickstart", "--corpus", str(corpus_dir), "--out", str(out), "--max-steps", "5"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_quickstart_on_a_single_file_holds_out_its_end(tmp_path, capsys):
    from tests.conftest import make_text

    book = tmp_path / "book.txt"
    book.write_text("".join(make_text(30)), encoding="utf-8")
    out = tmp_path / "qs"
    code = main(
        [
            "quickstart",
            "--corpus",
            str(book),
            "--out",
            str(out),
            "--preset",
            "test",
            "--vocab-size",
            "300",
            "--max-steps",
            "5",
        ]
    )
    assert code == 0
    assert "holding out the last 10%" in capsys.readouterr().out
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["options"]["split"] == "tail" and manifest["splits"]["val"]["tokens"] > 0
    # --overwrite removes the earlier quickstart only once the new one is complete: a new one that fails leaves
    # the earlier one as it was (it was deleted before anything new existed).
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    argv = [
        "quickstart",
        "--corpus",
        str(tmp_path / "missing"),
        "--out",
        str(out),
        "--overwrite",
        "--max-steps",
        "5",
    ]
    assert main(argv) == 2
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".old-")]


def test_the_budget_is_sized_from_timed_training_steps(char_data):
    from lmforge.config import build_run_config
    from lmforge.quickstart import _time_training_steps

    per_step, tokens = _time_training_steps(char_data, "test", seed=0)
    cfg = build_run_config(preset="test")
    assert tokens == cfg.train.batch_size * cfg.model.block_size  # every target token of one batch
    assert per_step > 0
