"""Translation and summarization: pair readers, BLEU/chrF/ROUGE, and seq2seq fine-tuning scored through the CLI."""

import json
import random

import pytest
import sacrebleu
import torch

import lmforge
from lmforge.cli.main import main
from lmforge.errors import DataError
from lmforge.eval.seq2seq_metrics import bleu, chrf, rouge, score_outputs, write_report
from lmforge.tasks.translate.pairs import Pair, read_pairs, read_parallel


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


def test_csv_pairs_with_multi_line_cells_and_tsv_headers(tmp_path):
    csv_file = tmp_path / "d.csv"
    csv_file.write_text(
        'id,dialogue,summary\n1,"#P1#: hi, you\n#P2#: ""hello""",They greet.\n\n2,"#P1#: bye",One leaves.\n',
        encoding="utf-8",
    )
    assert read_pairs(csv_file, "dialogue", "summary") == [
        Pair('#P1#: hi, you\n#P2#: "hello"', "They greet."),
        Pair("#P1#: bye", "One leaves."),
    ]
    assert read_pairs(csv_file, "2", "0", max_pairs=1) == [Pair("They greet.", "1")]
    with pytest.raises(DataError, match="no target column 'summ' in the header \\(id, dialogue, summary\\)"):
        read_pairs(csv_file, "dialogue", "summ")
    (tmp_path / "e.csv").write_text('src,tgt\nok,fine\n"",empty\n', encoding="utf-8")
    with pytest.raises(DataError, match="e.csv:3 has an empty or missing source"):
        read_pairs(tmp_path / "e.csv")
    tsv = tmp_path / "h.tsv"
    tsv.write_text("id\ttarget\tsource\n7\ta house\tein Haus\n", encoding="utf-8")
    assert read_pairs(tsv, "source", "target") == [Pair("ein Haus", "a house")]  # the header is not a pair


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
    (tmp_path / "train.de").write_text("ein Haus\nzwei\n", encoding="utf-8")
    (tmp_path / "train.en").write_text("a house\ntwo\n", encoding="utf-8")
    assert read_pairs(tmp_path / "train", source_lang="de", target_lang="en") == [
        Pair("ein Haus", "a house"),
        Pair("zwei", "two"),
    ]
    assert read_pairs(tmp_path / "train", source_lang="en", target_lang="de", max_pairs=1) == [
        Pair("a house", "ein Haus")
    ]
    with pytest.raises(DataError, match="both --source-lang and --target-lang"):
        read_pairs(tmp_path / "train", source_lang="de")


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
    assert rouge(["the cat sat"], ["the cat sat on the mat"])["rougeL"] == pytest.approx(
        100 * 2 * 1 * 0.5 / 1.5
    )


def test_chinese_targets_are_scored_by_character():
    refs, hyps = ["我爱北京天安门"], ["我爱北京"]
    assert bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score)
    assert (
        bleu(hyps, refs) > 0 and sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score == 0
    )  # one "word"
    # 4 of 7 characters: R = 4/7, P = 1 -> F = 8/11. rouge-score's own tokenizer would see no tokens at all.
    assert rouge(hyps, refs)["rouge1"] == pytest.approx(100 * 8 / 11)
    assert score_outputs("summarize", refs, refs)["rougeL"] == pytest.approx(100)


def test_report_shows_outputs_beside_references(tmp_path):
    scores = {"bleu": 12.5, "chrf": 40.0, "pairs": 2, "num_beams": 4}
    write_report(
        tmp_path / "r", "translate", scores, ["ein | Haus", "zwei"], ["a house", "two"], ["a house", "2"]
    )
    md = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    assert "| BLEU | 12.50 |" in md and "beam 4" in md and "| ein \\| Haus | a house | a house |" in md
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["chrf"] == 40.0
    assert len((tmp_path / "r" / "outputs.jsonl").read_text().splitlines()) == 2


# ---- fine-tuning from the seq2seq-test preset on synthetic tasks ----------------------------------------------
WORDS = "red blue green cat dog bird tree house river stone sun moon".split()
MAPPING = {w: w[::-1] + "o" for w in WORDS}  # a word-for-word "translation" into made-up words
FAST = {"model.dropout": 0.0, "train.threads": 1, "train.log_every": 10}


def translation_pairs(n: int, seed: int) -> str:
    r = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [r.choice(WORDS) for _ in range(r.randint(2, 5))]
        lines.append(" ".join(words) + "\t" + " ".join(MAPPING[w] for w in words))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    folder = tmp_path_factory.mktemp("translate")
    (folder / "train.tsv").write_text(translation_pairs(300, 0), encoding="utf-8")
    (folder / "dev.tsv").write_text(translation_pairs(30, 1), encoding="utf-8")
    result = lmforge.finetune(
        "translate",
        "seq2seq-test",
        folder / "train.tsv",
        folder / "run",
        dev=folder / "dev.tsv",
        epochs=10,
        lr=3e-3,
        overrides=FAST,
        progress=False,
    )
    return folder, result


def test_translation_fine_tuning_reaches_high_bleu_greedy_and_with_beams(translator, capsys, tmp_path):
    folder, result = translator
    scores = [
        json.loads(ln).get("val_bleu") for ln in (folder / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    scores = [s for s in scores if s is not None]
    assert scores[0] < 20 and result.metrics["val_bleu"] > 50, scores  # it learned, from near zero
    best = json.loads((result.best / "config.json").read_text())["metrics"]["val_bleu"]
    assert best == max(scores)  # the best checkpoint is the one with the best dev BLEU
    test = tmp_path / "test.tsv"
    test.write_text(translation_pairs(40, 2), encoding="utf-8")
    for beams in ("1", "4"):
        assert (
            main(
                [
                    "evaluate",
                    str(folder / "run"),
                    "--task",
                    "translate",
                    "--data",
                    str(test),
                    "--num-beams",
                    beams,
                    "--json",
                    "--report",
                    str(tmp_path / f"report-{beams}"),
                ]
            )
            == 0
        )
        out = json.loads(capsys.readouterr().out)
        assert out["bleu"] > 50 and out["chrf"] > 70 and out["pairs"] == 40, out
    assert "| BLEU |" in (tmp_path / "report-4" / "report.md").read_text(encoding="utf-8")
    lm = lmforge.load(result.best)
    assert lm.transduce("red cat", num_beams=4) == lm.transduce("red cat") == "dero taco"
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("sun moon\n\nblue dog tree\n", encoding="utf-8")
    assert (
        main(
            [
                "predict",
                str(folder / "run"),
                "--task",
                "translate",
                "--input",
                str(sentences),
                "--num-beams",
                "3",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.splitlines() == ["nuso noomo", "eulbo godo eerto"]


def test_cli_fine_tunes_a_checkpoint_on_jsonl_fields(translator, tmp_path, capsys):
    folder, result = translator
    lines = [ln.split("\t") for ln in translation_pairs(64, 3).splitlines()]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"en": s, "xx": t}) + "\n" for s, t in lines), encoding="utf-8")
    argv = [
        "finetune",
        "--task",
        "translate",
        "--model",
        str(result.best),
        "--train",
        str(data),
        "--dev",
        str(data),
        "--source-field",
        "en",
        "--target-field",
        "xx",
        "--out",
        str(tmp_path / "again"),
        "--epochs",
        "1",
        "--json",
        "--quiet",
        "--train.threads",
        "1",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 2 and out["val_bleu"] > 50  # starts from the fine-tuned weights, not from scratch
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"en": "red", "xx": "dero"}\n{"en": "", "xx": "x"}\n', encoding="utf-8")
    assert (
        main(
            [
                *argv[:6],
                str(bad),
                "--out",
                str(tmp_path / "bad-run"),
                "--source-field",
                "en",
                "--target-field",
                "xx",
            ]
        )
        == 2
    )
    assert "bad.jsonl:2 has an empty or missing source" in capsys.readouterr().err


def test_cli_reads_parallel_files_by_language_suffix(translator, tmp_path, capsys):
    folder, result = translator
    lines = [ln.split("\t") for ln in translation_pairs(40, 4).splitlines()]
    for split in ("train", "val"):
        (tmp_path / f"{split}.xx").write_text("".join(t + "\n" for _, t in lines), encoding="utf-8")
        (tmp_path / f"{split}.en").write_text("".join(s + "\n" for s, _ in lines), encoding="utf-8")
    langs = ["--source-lang", "en", "--target-lang", "xx"]
    assert (
        main(
            [
                "finetune",
                "--task",
                "translate",
                "--model",
                str(result.best),
                "--train",
                str(tmp_path / "train"),
                "--dev",
                str(tmp_path / "val"),
                *langs,
                "--out",
                str(tmp_path / "run"),
                "--epochs",
                "1",
                "--json",
                "--quiet",
                "--train.threads",
                "1",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["val_bleu"] > 50
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "run"),
                "--task",
                "translate",
                "--data",
                str(tmp_path / "val"),
                *langs,
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["pairs"] == 40
    assert (
        main(
            [
                "predict",
                str(tmp_path / "run"),
                "--task",
                "translate",
                "--input",
                str(tmp_path / "val"),
                "--source-lang",
                "en",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.splitlines()[0] == lines[0][1]
    assert (
        main(["predict", str(tmp_path / "run"), "--task", "translate", "--input", "-", "--source-lang", "en"])
        == 2
    )
    assert "does not apply to --input -" in capsys.readouterr().err
    (tmp_path / "val.en").write_text("red\n", encoding="utf-8")
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "run"),
                "--task",
                "translate",
                "--data",
                str(tmp_path / "val"),
                *langs,
            ]
        )
        == 2
    )
    assert "val.en has 1 lines but" in capsys.readouterr().err


def summary_pairs(n: int, seed: int) -> list[dict]:
    r = random.Random(seed)
    items = []
    for _ in range(n):
        sentences = [" ".join(r.choice(WORDS) for _ in range(r.randint(2, 4))) + "." for _ in range(3)]
        items.append({"article": " ".join(sentences), "summary": sentences[0]})
    return items


def test_summarization_learns_that_the_first_sentence_is_the_summary(tmp_path, capsys):
    for name, n, seed in (("train", 300, 0), ("dev", 20, 1), ("test", 40, 2)):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps(x) + "\n" for x in summary_pairs(n, seed)), encoding="utf-8"
        )
    result = lmforge.finetune(
        "summarize",
        "seq2seq-test",
        tmp_path / "train.jsonl",
        tmp_path / "run",
        dev=tmp_path / "dev.jsonl",
        source_field="article",
        target_field="summary",
        epochs=10,
        lr=3e-3,
        overrides=FAST,
        progress=False,
    )
    assert "val_rougeL" in result.metrics
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "run"),
                "--task",
                "summarize",
                "--data",
                str(tmp_path / "test.jsonl"),
                "--source-field",
                "article",
                "--target-field",
                "summary",
                "--json",
            ]
        )
        == 0
    )
    scores = json.loads(capsys.readouterr().out)
    test = summary_pairs(40, 2)
    # The trivial baseline: a sentence of the article that is not the summary (same words, same lengths).
    baseline = rouge([x["article"].split(". ")[1] + "." for x in test], [x["summary"] for x in test])[
        "rougeL"
    ]
    assert scores["rougeL"] > baseline + 30 and scores["rougeL"] > 70, (scores, baseline)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_batches_are_padded_to_a_multiple_under_bf16_on_a_cpu_only(tmp_path, monkeypatch, precision):
    from lmforge.device import cpu_has_native_bf16
    from lmforge.train.trainer import Trainer

    if precision == "bf16" and not cpu_has_native_bf16():
        pytest.skip("this CPU has no bf16 instructions")
    (tmp_path / "train.tsv").write_text(translation_pairs(40, 0), encoding="utf-8")
    widths = []
    real = Trainer._train_step

    def train_step(self):
        batch = self.objective.next_batch(torch.Generator().manual_seed(self.step))
        widths.append((self.objective.round_to, batch[0].shape[1], batch[2].shape[1]))
        return real(self)

    monkeypatch.setattr(Trainer, "_train_step", train_step)
    overrides = {**FAST, "train.precision": precision, "train.max_steps": 3}
    lmforge.finetune(
        "translate",
        "seq2seq-test",
        tmp_path / "train.tsv",
        tmp_path / "run",
        overrides=overrides,
        progress=False,
    )
    multiple = Trainer.ROUND_LENGTHS if precision == "bf16" else 1
    assert widths and all(r == multiple and s % multiple == 0 and t % multiple == 0 for r, s, t in widths)
