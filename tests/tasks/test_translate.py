"""Translation and summarization: pair readers, BLEU/chrF/ROUGE, and seq2seq fine-tuning scored through the CLI."""

import json

import pytest
import sacrebleu

from lmforge.errors import DataError
from lmforge.eval.seq2seq_metrics import bleu, chrf, rouge, score_outputs, write_report
from lmforge.tasks.pairs import Pair, read_pairs, read_parallel


def test_tsv_and_jsonl_pairs_and_their_errors(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text("ein Haus\ta house\n\nzwei\ttwo\n", encoding="utf-8")
    assert read_pairs(tsv) == [Pair("ein Haus", "a house"), Pair("zwei", "two")]
    assert read_pairs(tsv, "1", "0")[0] == Pair("a house", "ein Haus")
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"de": "Haus", "en": "house"}\n{"de": "Baum", "en": "tree"}\n', encoding="utf-8")
    assert read_pairs(jsonl, "de", "en", max_pairs=1) == [Pair("Haus", "house")]
    for name, text, where in [
        ("a.tsv", "ok\tfine\n\tmissing source\n", ":2 "),
        ("b.tsv", "ok\tfine\nno target\t  \n", ":2 "),
        ("c.tsv", "ok\tfine\nok\tfine\none column\n", ":3 "),
        ("d.jsonl", '{"src": "a", "tgt": "b"}\n{"src": "a"}\n', ":2 "),
        ("e.jsonl", "not json\n", ":1 "),
    ]:
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match=f"{name}{where}"):
            read_pairs(tmp_path / name)
    with pytest.raises(DataError, match="no source-target pairs"):
        (tmp_path / "empty.tsv").write_text("\n", encoding="utf-8")
        read_pairs(tmp_path / "empty.tsv")


def test_parallel_files(tmp_path):
    (tmp_path / "s").write_text("a\nb\nc\n", encoding="utf-8")
    (tmp_path / "t").write_text("A\nB\nC\n", encoding="utf-8")
    assert read_parallel(tmp_path / "s", tmp_path / "t")[2] == Pair("c", "C")
    (tmp_path / "short").write_text("A\nB\n", encoding="utf-8")
    with pytest.raises(DataError, match="3 lines .* 2; .*short ends at line 2"):
        read_parallel(tmp_path / "s", tmp_path / "short")
    (tmp_path / "gap").write_text("A\n\nC\n", encoding="utf-8")
    with pytest.raises(DataError, match="gap:2 is empty"):
        read_parallel(tmp_path / "s", tmp_path / "gap")


def test_bleu_chrf_rouge_on_hand_made_strings():
    refs = ["the cat sat on the mat", "a dog barked at the mailman today"]
    assert bleu(refs, refs) == pytest.approx(100) and chrf(refs, refs) == pytest.approx(100)
    assert rouge(refs, refs) == pytest.approx({"rouge1": 100, "rouge2": 100, "rougeL": 100})
    hyps = ["the cat sat on a mat", "the dog barked at a postman"]
    assert bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert chrf(hyps, refs) == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert 0 < bleu(hyps, refs) < 60
    # ROUGE-1 F of pair 1 by hand: 5 of 6 unigrams shared both ways (the, cat, sat, on, mat + the) -> P = R = 5/6.
    assert rouge(hyps[:1], refs[:1])["rouge1"] == pytest.approx(100 * 5 / 6)
    # ROUGE-L: the longest common subsequence "the cat sat on mat" has 5 tokens.
    assert rouge(["the cat sat"], ["the cat sat on the mat"])["rougeL"] == pytest.approx(100 * 2 * 1 * 0.5 / 1.5)


def test_chinese_targets_are_scored_by_character():
    refs, hyps = ["我爱北京天安门"], ["我爱北京"]
    assert bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score)
    assert bleu(hyps, refs) > 0 and sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score == 0  # one "word"
    # 4 of 7 characters: R = 4/7, P = 1 -> F = 8/11. rouge-score's own tokenizer would see no tokens at all.
    assert rouge(hyps, refs)["rouge1"] == pytest.approx(100 * 8 / 11)
    assert score_outputs("summarize", refs, refs)["rougeL"] == pytest.approx(100)


def test_report_shows_outputs_beside_references(tmp_path):
    scores = {"bleu": 12.5, "chrf": 40.0, "pairs": 2, "num_beams": 4}
    write_report(tmp_path / "r", "translate", scores, ["ein | Haus", "zwei"], ["a house", "two"], ["a house", "2"])
    md = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    assert "| BLEU | 12.50 |" in md and "beam 4" in md and "| ein \\| Haus | a house | a house |" in md
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["chrf"] == 40.0
    assert len((tmp_path / "r" / "outputs.jsonl").read_text().splitlines()) == 2
